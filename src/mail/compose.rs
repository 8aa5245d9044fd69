//! A [`Message`] as RFC 5322 text: plain UTF-8 to one bare address, with a
//! Message-ID derived from the outbox row so that a retry is recognisably
//! the same message.

use lettre::{
    Address,
    message::{
        Mailbox,
        header::{ContentType, MIME_VERSION_1_0},
    },
};
use uuid::Uuid;

use super::{Message, SendError};

/// The message as lettre sends it. Every header value goes through lettre's
/// encoder, which turns CR and LF into RFC 2047 encoded words, so no field
/// can start a header of its own.
pub(super) fn compose(
    from: &Mailbox,
    id: Uuid,
    message: &Message,
) -> Result<lettre::Message, SendError> {
    // A bare address only: a display name would be text the caller did not
    // mean to put in the To header, and the outbox never stores one.
    let to: Address = message.to.parse().map_err(|e| SendError {
        permanent: true,
        reason: format!("the recipient {:?} is not an address: {e}", message.to),
    })?;
    lettre::Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(one_line(&message.subject))
        .message_id(Some(message_id(from, id)))
        .header(MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        .body(message.text.clone())
        .map_err(|e| SendError {
            permanent: true,
            reason: format!("the message cannot be built: {e}"),
        })
}

/// `<{id}@{domain of from}>`: unique per outbox row, the same on every retry.
pub(super) fn message_id(from: &Mailbox, id: Uuid) -> String {
    format!("<{id}@{}>", from.email.domain())
}

/// Lettre would encode a line break safely, but a subject that spans lines
/// is a mistake upstream; readers get a space instead of an encoded word.
fn one_line(subject: &str) -> String {
    subject
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from() -> Mailbox {
        "authgate <noreply@example.com>".parse().unwrap()
    }

    fn message(to: &str, subject: &str) -> Message {
        Message {
            to: to.into(),
            subject: subject.into(),
            text: "Hello.\n".into(),
        }
    }

    fn headers(message: &lettre::Message) -> String {
        let raw = String::from_utf8(message.formatted()).unwrap();
        raw.split("\r\n\r\n").next().unwrap().to_owned()
    }

    #[test]
    fn the_message_id_is_the_outbox_id_at_the_senders_domain() {
        let id = Uuid::new_v4();
        let built = compose(&from(), id, &message("ann@example.org", "Hi")).unwrap();
        let headers = headers(&built);
        assert!(
            headers.contains(&format!("Message-ID: <{id}@example.com>\r\n")),
            "{headers}"
        );
        assert!(headers.contains("MIME-Version: 1.0\r\n"), "{headers}");
        assert!(headers.contains("Date: "), "{headers}");
    }

    #[test]
    fn a_subject_with_a_line_break_stays_one_header() {
        let built = compose(
            &from(),
            Uuid::new_v4(),
            &message("ann@example.org", "Hi\r\nBcc: eve@example.net"),
        )
        .unwrap();
        let headers = headers(&built);
        assert!(
            headers.contains("Subject: Hi  Bcc: eve@example.net\r\n"),
            "{headers}"
        );
        assert!(!headers.lines().any(|l| l.starts_with("Bcc:")), "{headers}");
        assert_eq!(built.envelope().to().len(), 1);
    }

    #[test]
    fn a_recipient_with_a_display_name_is_refused() {
        let e = compose(
            &from(),
            Uuid::new_v4(),
            &message("Ann <ann@example.org>", "Hi"),
        )
        .unwrap_err();
        assert!(e.permanent);
    }
}
