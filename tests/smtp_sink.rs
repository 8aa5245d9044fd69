//! The test SMTP sink against the real client: what `authgate::mail`
//! sends through lettre comes back out of the sink's helpers intact.

mod common;

use std::time::Duration;

use authgate::mail::{Mailer, Message};
use common::smtp::SmtpSink;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
};
use uuid::Uuid;

const FROM: &str = "authgate <noreply@example.test>";
const WAIT: Duration = Duration::from_secs(5);

fn mailer(sink: &SmtpSink) -> Mailer {
    // Never created: the URL selects SMTP.
    let unused = std::env::temp_dir().join("authgate-smtp-sink-unused");
    Mailer::new(Some(&sink.url()), FROM, &unused).unwrap()
}

fn message(to: &str, subject: &str, text: &str) -> Message {
    Message {
        to: to.into(),
        subject: subject.into(),
        text: text.into(),
    }
}

#[tokio::test]
async fn a_message_from_lettre_reads_back_as_it_was_written() {
    let sink = SmtpSink::start().await;
    let token = "Zq3xR8vN1pL6tY0wK4mH9sB2cF7dJ5gA-_xQwErTyUiOpAsDfGhJkLzXcVbNm1234567890abcdefghij";
    let subject =
        "Bestätigen Sie Ihre E-Mail-Adresse für authgate – ein Link, gültig für 24 Stunden ✓";
    let text = format!(
        "Hallo,\n\n\
         öffnen Sie diesen Link, um Ihre Adresse zu bestätigen:\n\
         http://127.0.0.1:8010/auth/verify-email/confirm?token={token}&next=%2Fhome\n\n\
         .a line that starts with a dot\n\
         ..and one with two\n\
         .\n\
         Danke.\n"
    );
    let id = Uuid::new_v4();
    mailer(&sink)
        .send(id, &message("ann@example.org", subject, &text))
        .await
        .unwrap();

    let got = sink.wait_for("Ann@Example.ORG", WAIT).await;
    assert_eq!(got.from, "noreply@example.test");
    assert_eq!(got.to, ["ann@example.org"]);
    assert_eq!(got.subject(), subject);
    assert_eq!(got.body(), text);
    assert_eq!(got.link_token().as_deref(), Some(token));
    assert_eq!(
        got.header("message-id"),
        Some(format!("<{id}@example.test>"))
    );
    assert_eq!(got.header("From").as_deref(), Some(FROM));
    assert_eq!(
        got.header("Content-Transfer-Encoding").as_deref(),
        Some("quoted-printable"),
        "this test is meant to cover quoted-printable"
    );
    assert!(got.data.contains("\r\n"), "CRLF is kept in data");
    assert_eq!(sink.count_to("ANN@example.org"), 1);
}

#[tokio::test]
async fn base64_and_7bit_bodies_and_long_ascii_subjects_read_back() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);
    let cyrillic =
        "Привет! Подтвердите адрес: http://127.0.0.1:8010/verify?token=abc-123 — спасибо.\n";
    let subject = "A plain ASCII subject that is long enough to be folded over more than one line";
    mailer
        .send(
            Uuid::new_v4(),
            &message("bob@example.org", "Привет", cyrillic),
        )
        .await
        .unwrap();
    mailer
        .send(
            Uuid::new_v4(),
            &message("bob@example.org", subject, "No link here.\n"),
        )
        .await
        .unwrap();

    let first = sink.wait_for("bob@example.org", WAIT).await;
    assert_eq!(
        first.header("Content-Transfer-Encoding").as_deref(),
        Some("base64")
    );
    assert_eq!(first.subject(), "Привет");
    assert_eq!(first.body(), cyrillic);
    assert_eq!(first.link_token().as_deref(), Some("abc-123"));

    let second = sink.wait_for("bob@example.org", WAIT).await;
    assert_eq!(
        second.header("Content-Transfer-Encoding").as_deref(),
        Some("7bit")
    );
    assert_eq!(second.subject(), subject);
    assert_eq!(second.body(), "No link here.\n");
    assert_eq!(second.link_token(), None);
    assert_eq!(sink.count_to("bob@example.org"), 2);
}

#[tokio::test]
async fn a_451_at_the_end_of_data_is_a_transient_error_and_a_retry_goes_through() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);
    let id = Uuid::new_v4();
    let msg = message("cat@example.org", "Retry", "Once more.\n");
    sink.fail_next(1);

    let e = mailer.send(id, &msg).await.unwrap_err();
    assert!(!e.permanent, "{e}");
    assert!(e.reason.contains("451"), "{e}");
    assert_eq!(sink.count_to("cat@example.org"), 0);

    mailer.send(id, &msg).await.unwrap();
    let got = sink.wait_for("cat@example.org", WAIT).await;
    assert_eq!(
        got.header("Message-ID"),
        Some(format!("<{id}@example.test>"))
    );
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_550_at_rcpt_is_a_permanent_error() {
    let sink = SmtpSink::start().await;
    let mailer = mailer(&sink);
    sink.reject_next(1);

    let msg = message("dan@example.org", "Nobody", "Hello?\n");
    let e = mailer.send(Uuid::new_v4(), &msg).await.unwrap_err();
    assert!(e.permanent, "{e}");
    assert!(e.reason.contains("550"), "{e}");
    assert_eq!(sink.count_to("dan@example.org"), 0);

    mailer.send(Uuid::new_v4(), &msg).await.unwrap();
    assert_eq!(sink.count_to("dan@example.org"), 1);
}

#[tokio::test]
#[should_panic(expected = "no new mail to eve@example.org")]
async fn waiting_for_mail_that_never_comes_panics_with_what_did() {
    let sink = SmtpSink::start().await;
    mailer(&sink)
        .send(
            Uuid::new_v4(),
            &message("fay@example.org", "Other", "Hi.\n"),
        )
        .await
        .unwrap();
    sink.wait_for("eve@example.org", Duration::from_millis(100))
        .await;
}

/// Speaks to the sink by hand: the replies lettre does not exercise, and a
/// client that hangs up in the middle of DATA.
#[tokio::test]
async fn the_sink_speaks_smtp_and_survives_a_client_that_hangs_up() {
    let sink = SmtpSink::start().await;
    let addr = sink.url().replace("smtp://", "");
    let stream = TcpStream::connect(&addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);

    async fn reply(read: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            read.read_line(&mut line).await.unwrap();
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
    assert!(reply(&mut read).await.starts_with("220 "));
    let mut say = async |command: &str| {
        let line = format!("{command}\r\n");
        write.write_all(line.as_bytes()).await.unwrap();
        reply(&mut read).await
    };
    assert!(say("MAIL FROM:<a@example.test>").await.starts_with("503 "));
    let ehlo = say("EHLO client.test").await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(
        !ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(say("VRFY root").await.starts_with("502 "));
    assert!(say("NOOP").await.starts_with("250 "));
    assert!(say("RCPT TO:<b@example.test>").await.starts_with("503 "));
    assert!(say("MAIL FROM:<> BODY=8BITMIME").await.starts_with("250 "));
    assert!(say("RSET").await.starts_with("250 "));
    assert!(say("DATA").await.starts_with("503 "));
    assert!(say("mail from:<a@example.test>").await.starts_with("250 "));
    assert!(say("RCPT TO:<B@example.test>").await.starts_with("250 "));
    assert!(say("RCPT TO:<c@example.test>").await.starts_with("250 "));
    assert!(say("DATA").await.starts_with("354 "));
    let sent =
        say("Subject: =?ISO-8859-1?Q?caf=E9?=\r\n =?utf-8?q?_au_lait?= by hand\r\n\r\n..dot\r\n.")
            .await;
    assert!(sent.starts_with("250 "), "{sent}");
    assert!(say("QUIT").await.starts_with("221 "));

    let got = sink.wait_for("b@example.test", WAIT).await;
    assert_eq!(got.from, "a@example.test");
    assert_eq!(got.to, ["B@example.test", "c@example.test"]);
    assert_eq!(
        got.data,
        "Subject: =?ISO-8859-1?Q?caf=E9?=\r\n =?utf-8?q?_au_lait?= by hand\r\n\r\n.dot\r\n"
    );
    assert_eq!(got.subject(), "café au lait by hand");
    assert_eq!(got.body(), ".dot\n");

    let mut gone = TcpStream::connect(&addr).await.unwrap();
    gone.write_all(b"EHLO x\r\nMAIL FROM:<a@example.test>\r\nRCPT TO:<g@example.test>\r\nDATA\r\nSubject: half")
        .await
        .unwrap();
    drop(gone);
    mailer(&sink)
        .send(
            Uuid::new_v4(),
            &message("h@example.org", "After", "Still here.\n"),
        )
        .await
        .unwrap();
    assert_eq!(sink.count_to("h@example.org"), 1);
    assert_eq!(sink.count_to("g@example.test"), 0);
}
