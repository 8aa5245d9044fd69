//! Sending one message: to an SMTP server, or as an `.eml` file into a
//! directory when no server is configured (development, tests).
//!
//! [`Mailer::send`] either delivers a message or says whether trying again
//! could help; retrying is the caller's business. The Message-ID comes from
//! the caller's id, so a message sent twice (the server took it but the
//! answer was lost) is recognisably one message.

mod compose;

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor, message::Mailbox};
use uuid::Uuid;

/// Lettre's own timeout bounds only the TCP connect; every later read and
/// write of the asynchronous transport waits forever, so the whole exchange
/// gets a deadline of its own.
const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A message as the outbox stores it: plain text, one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// A bare address, `ann@example.org`; a display name is refused.
    pub to: String,
    pub subject: String,
    /// The body; `\n` line ends are sent as CRLF.
    pub text: String,
}

/// Why a send failed. `permanent` is true when retrying cannot help (the
/// server refused the recipient or the message with a 5xx, the address does
/// not parse); false for connection errors, timeouts, 4xx.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    pub permanent: bool,
    /// One line, for the log and the outbox row.
    pub reason: String,
}

impl SendError {
    fn transient(reason: String) -> Self {
        SendError {
            permanent: false,
            reason,
        }
    }
}

/// Where mail goes: an SMTP server, or a directory of .eml files.
#[derive(Clone)]
pub struct Mailer {
    from: Mailbox,
    transport: Transport,
}

#[derive(Clone)]
enum Transport {
    Smtp {
        client: AsyncSmtpTransport<Tokio1Executor>,
        /// `host:port`, for [`Mailer::describe`].
        server: String,
    },
    Directory(PathBuf),
}

impl Mailer {
    /// SMTP when `smtp_url` is set and not blank (`smtp://user:pass@host:587?tls=starttls`,
    /// `smtp://host:25` without TLS, `smtps://user:pass@host:465`), otherwise
    /// the directory `outbox_dir` (created if missing). `from` is an RFC 5322
    /// mailbox like `authgate <noreply@example.com>`. The error is one line
    /// naming AUTHGATE_SMTP_URL, AUTHGATE_MAIL_FROM or AUTHGATE_MAIL_OUTBOX,
    /// and never shows the SMTP password.
    pub fn new(smtp_url: Option<&str>, from: &str, outbox_dir: &Path) -> anyhow::Result<Self> {
        let from: Mailbox = from.parse().map_err(|_| {
            anyhow!(
                "AUTHGATE_MAIL_FROM {from:?} is not a mailbox like `authgate <noreply@example.com>`"
            )
        })?;
        let transport = match smtp_url.map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => smtp(url)?,
            None => directory(outbox_dir)?,
        };
        Ok(Mailer { from, transport })
    }

    /// Sends `message`; `id` becomes the Message-ID's local part
    /// (`<{id}@{domain of from}>`) so that a retried send of the same outbox
    /// row carries the same Message-ID. Over SMTP the whole exchange is
    /// bounded by 20 s.
    pub async fn send(&self, id: Uuid, message: &Message) -> Result<(), SendError> {
        let email = compose::compose(&self.from, id, message)?;
        match &self.transport {
            Transport::Smtp { client, .. } => {
                match tokio::time::timeout(SMTP_TIMEOUT, client.send(email)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(classify(&e)),
                    Err(_) => Err(SendError::transient(format!(
                        "the SMTP server did not finish within {} s",
                        SMTP_TIMEOUT.as_secs()
                    ))),
                }
            }
            Transport::Directory(dir) => {
                let path = write_eml(dir, id, &email.formatted()).await?;
                // Never the body: it carries single-use tokens.
                tracing::info!(
                    to = %message.to,
                    subject = %message.subject,
                    path = %path.display(),
                    "mail written to the outbox directory"
                );
                Ok(())
            }
        }
    }

    /// "smtp host:port" or "directory PATH", for the start-up log line; never
    /// a password.
    pub fn describe(&self) -> String {
        match &self.transport {
            Transport::Smtp { server, .. } => format!("smtp {server}"),
            Transport::Directory(dir) => format!("directory {}", dir.display()),
        }
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("to", &self.describe())
            .finish()
    }
}

fn smtp(raw: &str) -> anyhow::Result<Transport> {
    const FORMS: &str = "smtp://host[:port], smtp://user:pass@host[:port]?tls=starttls \
                         or smtps://user:pass@host[:port]";
    // The URL's own text is never echoed: it may hold the password.
    let mut url = url::Url::parse(raw)
        .map_err(|e| anyhow!("AUTHGATE_SMTP_URL is not a URL ({e}); expected {FORMS}"))?;
    let tls = url
        .query_pairs()
        .find(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned());
    let (default_port, encrypted) = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => (25, false),
        ("smtp", Some("starttls" | "required")) => (587, true),
        // STARTTLS only if the server offers it: anyone on the path can
        // strip the offer, so it does not count as encrypted.
        ("smtp", Some("opportunistic")) => (587, false),
        ("smtps", None) => (465, true),
        _ => bail!("AUTHGATE_SMTP_URL has an unknown scheme or tls= value; expected {FORMS}"),
    };
    // Lettre authenticates with PLAIN or LOGIN whatever the connection, and
    // both send the password as it is.
    if url.password().is_some() && !encrypted {
        bail!(
            "AUTHGATE_SMTP_URL has a password but no TLS: use smtps:// or ?tls=starttls \
             so that it is not sent in the clear"
        );
    }
    if !url.username().is_empty() && url.password().is_none() {
        bail!("AUTHGATE_SMTP_URL has a user but no password");
    }
    let Some(host) = url.host_str() else {
        bail!("AUTHGATE_SMTP_URL has no host; expected {FORMS}");
    };
    let server = format!("{host}:{}", url.port().unwrap_or(default_port));
    if tls.as_deref() == Some("starttls") {
        // Lettre's name for it.
        url.set_query(Some("tls=required"));
    }
    let client = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.as_str())
        .map_err(|e| anyhow!("AUTHGATE_SMTP_URL: {e}"))?
        .timeout(Some(CONNECT_TIMEOUT))
        .build();
    Ok(Transport::Smtp { client, server })
}

/// Checks now that the directory can be written, rather than at the first
/// message, which would fail only in the outbox's log.
fn directory(dir: &Path) -> anyhow::Result<Transport> {
    let shown = dir.display();
    std::fs::create_dir_all(dir)
        .with_context(|| format!("AUTHGATE_MAIL_OUTBOX {shown}: cannot create the directory"))?;
    let probe = dir.join(format!(".probe-{}", Uuid::new_v4().simple()));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .with_context(|| format!("AUTHGATE_MAIL_OUTBOX {shown}: cannot write in the directory"))?;
    Ok(Transport::Directory(dir.to_owned()))
}

/// Writes `{id}.eml` whole or not at all: a reader polling the directory
/// never sees half a message. A retry replaces the file.
async fn write_eml(dir: &Path, id: Uuid, bytes: &[u8]) -> Result<PathBuf, SendError> {
    let path = dir.join(format!("{id}.eml"));
    let partial = dir.join(format!(".{id}.{}.partial", Uuid::new_v4().simple()));
    let written = async {
        tokio::fs::write(&partial, bytes).await?;
        tokio::fs::rename(&partial, &path).await
    }
    .await;
    match written {
        Ok(()) => Ok(path),
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(SendError::transient(format!(
                "cannot write {}: {e}",
                path.display()
            )))
        }
    }
}

/// 5xx replies are permanent, except those about our own credentials or TLS
/// (530, 534, 535, 538): they refuse every message until the operator fixes
/// the configuration, after which a retry goes through. Everything else
/// (4xx, connection, TLS, protocol errors) is transient.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
    let about_us = matches!(e.status().map(u16::from), Some(530 | 534 | 535 | 538));
    SendError {
        permanent: e.is_permanent() && !about_us,
        reason: e
            .to_string()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!("authgate-mail-{}", Uuid::new_v4()));
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const FROM: &str = "authgate <noreply@example.com>";

    fn message(to: &str) -> Message {
        Message {
            to: to.into(),
            subject: "Confirm your email".into(),
            text: "Open http://127.0.0.1:8010/verify?token=abc to confirm.\n".into(),
        }
    }

    fn header<'a>(eml: &'a str, name: &str) -> Option<&'a str> {
        let (headers, _) = eml.split_once("\r\n\r\n")?;
        headers.split("\r\n").find_map(|line| {
            let (n, v) = line.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    #[tokio::test]
    async fn the_directory_gets_one_eml_file_named_after_the_id() {
        let dir = TempDir::new();
        let mailer = Mailer::new(None, FROM, &dir.0).unwrap();
        let id = Uuid::new_v4();
        mailer.send(id, &message("ann@example.org")).await.unwrap();

        let names: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("{id}.eml")]);
        let eml = std::fs::read_to_string(dir.0.join(format!("{id}.eml"))).unwrap();
        assert_eq!(header(&eml, "To"), Some("ann@example.org"), "{eml}");
        assert_eq!(header(&eml, "From"), Some(FROM), "{eml}");
        assert_eq!(header(&eml, "Subject"), Some("Confirm your email"), "{eml}");
        let message_id = format!("<{id}@example.com>");
        assert_eq!(header(&eml, "Message-ID"), Some(message_id.as_str()));
        assert!(header(&eml, "Date").is_some(), "{eml}");
        assert_eq!(
            header(&eml, "Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        let (_, body) = eml.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            body,
            "Open http://127.0.0.1:8010/verify?token=abc to confirm.\r\n"
        );
    }

    #[tokio::test]
    async fn sending_the_same_id_again_replaces_the_file() {
        let dir = TempDir::new();
        let mailer = Mailer::new(None, FROM, &dir.0).unwrap();
        let id = Uuid::new_v4();
        mailer.send(id, &message("ann@example.org")).await.unwrap();
        mailer.send(id, &message("ann@example.org")).await.unwrap();
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_recipient_with_a_line_break_is_a_permanent_error() {
        let dir = TempDir::new();
        let mailer = Mailer::new(None, FROM, &dir.0).unwrap();
        let e = mailer
            .send(Uuid::new_v4(), &message("ann@example.org\r\nBcc: x@y"))
            .await
            .unwrap_err();
        assert!(e.permanent, "{e}");
        assert!(!e.reason.contains('\n'), "{e}");
        assert_eq!(std::fs::read_dir(&dir.0).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_transient_error() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let url = format!("smtp://127.0.0.1:{port}");
        let mailer = Mailer::new(Some(&url), FROM, Path::new("unused")).unwrap();
        let e = mailer
            .send(Uuid::new_v4(), &message("ann@example.org"))
            .await
            .unwrap_err();
        assert!(!e.permanent, "{e}");
    }

    #[test]
    fn a_from_that_is_not_a_mailbox_is_refused() {
        let dir = TempDir::new();
        for from in ["authgate", "authgate <noreply>", "a@b\r\nBcc: x@y"] {
            let e = Mailer::new(None, from, &dir.0).unwrap_err().to_string();
            assert!(e.contains("AUTHGATE_MAIL_FROM"), "{e}");
        }
    }

    #[test]
    fn an_outbox_that_cannot_be_created_is_refused() {
        let dir = TempDir::new();
        std::fs::create_dir_all(&dir.0).unwrap();
        let file = dir.0.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let e = Mailer::new(None, FROM, &file.join("outbox")).unwrap_err();
        assert!(format!("{e:#}").contains("AUTHGATE_MAIL_OUTBOX"), "{e:#}");
    }

    #[test]
    fn describe_names_the_server_without_the_password() {
        let cases = [
            (
                "smtps://ann:hunter2@mail.example.com",
                "smtp mail.example.com:465",
            ),
            (
                "smtp://ann:hunter2@mail.example.com:2525?tls=starttls",
                "smtp mail.example.com:2525",
            ),
            ("smtp://127.0.0.1:25", "smtp 127.0.0.1:25"),
            ("smtp://mail.example.com", "smtp mail.example.com:25"),
        ];
        for (url, shown) in cases {
            let mailer = Mailer::new(Some(url), FROM, Path::new("unused")).unwrap();
            assert_eq!(mailer.describe(), shown);
            assert!(!format!("{mailer:?}").contains("hunter2"));
        }
        let dir = TempDir::new();
        let mailer = Mailer::new(Some(" "), FROM, &dir.0).unwrap();
        assert_eq!(mailer.describe(), format!("directory {}", dir.0.display()));
    }

    #[test]
    fn bad_smtp_urls_are_refused_without_showing_the_password() {
        for url in [
            "mail.example.com",
            "http://ann:hunter2@mail.example.com",
            "smtp://ann:hunter2@mail.example.com",
            "smtp://ann:hunter2@mail.example.com?tls=opportunistic",
            "smtp://ann:hunter2@mail.example.com?tls=maybe",
            "smtp://ann@mail.example.com?tls=starttls",
        ] {
            let e = Mailer::new(Some(url), FROM, Path::new("unused")).unwrap_err();
            let e = format!("{e:#}");
            assert!(e.contains("AUTHGATE_SMTP_URL"), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{url}: {e}");
            assert!(!e.contains('\n'), "{url}: {e}");
        }
    }
}
