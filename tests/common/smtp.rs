//! An SMTP server inside the test process that keeps what it receives, so
//! black-box tests can read the mail the service sends. It speaks the part
//! of RFC 5321 that lettre uses without TLS or AUTH, and refuses messages on
//! request, temporarily or for good, to exercise the outbox's retries.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD_PAD_INDIFFERENT};
use parking_lot::Mutex;
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

/// Longer than any line lettre writes (998 octets plus CRLF); a longer one
/// ends the session rather than growing a buffer without bound.
const MAX_LINE: u64 = 4096;

/// A running sink. Clones share the same server and mailbox; it stops
/// accepting connections when the last clone is dropped.
#[derive(Clone)]
pub struct SmtpSink {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _acceptor: Arc<StopOnDrop>,
}

/// One accepted message.
#[derive(Debug, Clone)]
pub struct Received {
    /// The reverse path of MAIL FROM, without angle brackets.
    pub from: String,
    /// The forward paths of RCPT TO, in order, without angle brackets.
    pub to: Vec<String>,
    /// Headers and body exactly as sent after dot-unstuffing, CRLF line ends
    /// kept; the terminating `.` line is not included.
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Vec<Received>,
    /// Messages still to refuse with a 451 at the end of DATA.
    fail: usize,
    /// Messages still to refuse with a 550 at RCPT.
    reject: usize,
    /// Per lower-cased recipient, how many messages `wait_for` has handed out.
    taken: HashMap<String, usize>,
}

struct StopOnDrop(AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SmtpSink {
    /// Listens on 127.0.0.1, on a port of its own, on the current runtime.
    pub async fn start() -> SmtpSink {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the SMTP sink");
        let addr = listener.local_addr().expect("the SMTP sink's address");
        let state = Arc::new(Mutex::new(State::default()));
        let acceptor = tokio::spawn({
            let state = Arc::clone(&state);
            async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(session(stream, Arc::clone(&state)));
                        }
                        // Out of file descriptors, say: let some close.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        });
        SmtpSink {
            addr,
            state,
            _acceptor: Arc::new(StopOnDrop(acceptor.abort_handle())),
        }
    }

    /// `smtp://127.0.0.1:PORT`, for `AUTHGATE_SMTP_URL`.
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// Every message accepted so far, oldest first.
    pub fn messages(&self) -> Vec<Received> {
        self.state.lock().messages.clone()
    }

    /// Refuses the next `n` messages at the end of DATA with
    /// `451 4.3.0 try again later` (transient); they are not kept.
    pub fn fail_next(&self, n: usize) {
        self.state.lock().fail = n;
    }

    /// Refuses the next `n` messages at RCPT with `550 5.1.1 no such user`
    /// (permanent), every recipient of each; they are not kept.
    pub fn reject_next(&self, n: usize) {
        self.state.lock().reject = n;
    }

    /// Waits (polling every 20 ms, up to `timeout`) until a message to `to`
    /// (case-insensitive) has arrived; returns the first one not yet returned
    /// by an earlier `wait_for` for that recipient, or panics with what did
    /// arrive.
    pub async fn wait_for(&self, to: &str, timeout: Duration) -> Received {
        let key = to.to_lowercase();
        let deadline = Instant::now() + timeout;
        loop {
            {
                let mut state = self.state.lock();
                let taken = state.taken.get(&key).copied().unwrap_or(0);
                let next = state
                    .messages
                    .iter()
                    .filter(|m| m.is_to(&key))
                    .nth(taken)
                    .cloned();
                if let Some(message) = next {
                    state.taken.insert(key, taken + 1);
                    return message;
                }
            }
            if Instant::now() >= deadline {
                let arrived: Vec<String> = self
                    .messages()
                    .iter()
                    .map(|m| format!("{} -> {:?}: {:?}", m.from, m.to, m.subject()))
                    .collect();
                panic!(
                    "no new mail to {to} within {timeout:?}; arrived: {arrived:#?} \
                     (earlier wait_for calls took the first ones)"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How many messages to `to` (case-insensitive) have arrived.
    pub fn count_to(&self, to: &str) -> usize {
        let key = to.to_lowercase();
        self.state
            .lock()
            .messages
            .iter()
            .filter(|m| m.is_to(&key))
            .count()
    }
}

impl Received {
    fn is_to(&self, lowercase: &str) -> bool {
        self.to.iter().any(|r| r.to_lowercase() == lowercase)
    }

    /// The Subject header, unfolded and with RFC 2047 encoded words decoded;
    /// empty if there is none.
    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }

    /// The first header called `name` (case-insensitive), unfolded, trimmed,
    /// with RFC 2047 encoded words decoded.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = split_message(&self.data);
        headers
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| decode_encoded_words(v.trim()))
    }

    /// The body, with its quoted-printable or base64 transfer encoding
    /// undone, read as UTF-8, with `\n` line ends and no empty lines at the
    /// end: lettre writes CRLF before the final `.` even when the message
    /// already ends with one, so text sent as `"…\n"` reads back as `"…\n"`.
    pub fn body(&self) -> String {
        let (_, raw) = split_message(&self.data);
        let encoding = self
            .header("Content-Transfer-Encoding")
            .unwrap_or_default()
            .to_ascii_lowercase();
        let bytes = match encoding.as_str() {
            "quoted-printable" => decode_quoted_printable(&raw),
            "base64" => {
                let packed: String = raw.split_whitespace().collect();
                STANDARD_PAD_INDIFFERENT
                    .decode(packed)
                    .expect("a base64 body that decodes")
            }
            _ => raw.into_bytes(),
        };
        let mut body = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        while body.ends_with("\n\n") {
            body.pop();
        }
        body
    }

    /// The value of the `token` query parameter of the first http(s) link in
    /// the body; `None` if there is no link or it has no token.
    pub fn link_token(&self) -> Option<String> {
        let body = self.body();
        let start = ["http://", "https://"]
            .iter()
            .filter_map(|scheme| body.find(scheme))
            .min()?;
        let link = body[start..]
            .split(|c: char| c.is_whitespace() || "<>\"'()[]".contains(c))
            .next()?
            .trim_end_matches(['.', ',', ';', ':', '!', '?']);
        let url = url::Url::parse(link).ok()?;
        url.query_pairs()
            .find(|(k, _)| k == "token")
            .map(|(_, v)| v.into_owned())
    }
}

/// Unfolded `(name, value)` headers and the raw body, with `\n` line ends.
fn split_message(data: &str) -> (Vec<(String, String)>, String) {
    let data = data.replace("\r\n", "\n");
    let (head, body) = match data.split_once("\n\n") {
        Some((head, body)) => (head, body.to_owned()),
        None => (data.as_str(), String::new()),
    };
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            // Unfolding removes the line break and keeps the whitespace.
            if let Some((_, value)) = headers.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.to_owned()));
        }
    }
    (headers, body)
}

/// RFC 2047: `=?charset?B|Q?text?=`. Whitespace between two encoded words is
/// not part of the text, and a character may be split across words, so the
/// bytes of adjacent words are joined before they are read as UTF-8.
fn decode_encoded_words(value: &str) -> String {
    let mut out = String::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut rest = value;
    while let Some(start) = rest.find("=?") {
        let (before, tail) = rest.split_at(start);
        match encoded_word(tail) {
            Some((bytes, len)) => {
                let between_words = !pending.is_empty() && before.trim().is_empty();
                if !between_words {
                    flush(&mut out, &mut pending);
                    out.push_str(before);
                }
                pending.extend(bytes);
                rest = &tail[len..];
            }
            None => {
                flush(&mut out, &mut pending);
                out.push_str(before);
                out.push_str("=?");
                rest = &tail[2..];
            }
        }
    }
    flush(&mut out, &mut pending);
    out.push_str(rest);
    out
}

fn flush(out: &mut String, pending: &mut Vec<u8>) {
    out.push_str(&String::from_utf8_lossy(pending));
    pending.clear();
}

/// The decoded bytes (as UTF-8) of the encoded word `word` starts with, and
/// its length.
fn encoded_word(word: &str) -> Option<(Vec<u8>, usize)> {
    let inner = word.strip_prefix("=?")?;
    let (charset, rest) = inner.split_once('?')?;
    let (encoding, rest) = rest.split_once('?')?;
    let text = &rest[..rest.find("?=")?];
    if [charset, encoding, text]
        .iter()
        .any(|part| part.contains(char::is_whitespace))
    {
        return None;
    }
    let len = 2 + charset.len() + 1 + encoding.len() + 1 + text.len() + 2;
    let bytes = match encoding {
        "B" | "b" => STANDARD_PAD_INDIFFERENT.decode(text).ok()?,
        "Q" | "q" => decode_q(text),
        _ => return None,
    };
    // RFC 2231 allows a language after the charset: `utf-8*en`.
    let charset = charset.split('*').next().unwrap_or_default();
    let bytes = match charset.to_ascii_lowercase().as_str() {
        "utf-8" | "us-ascii" => bytes,
        "iso-8859-1" | "latin1" => bytes
            .iter()
            .map(|&b| char::from(b))
            .collect::<String>()
            .into_bytes(),
        _ => return None,
    };
    Some((bytes, len))
}

fn decode_q(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hex = [bytes.next(), bytes.next()];
                match hex_byte(hex) {
                    Some(decoded) => out.push(decoded),
                    None => out.extend([b'='].into_iter().chain(hex.into_iter().flatten())),
                }
            }
            _ => out.push(b),
        }
    }
    out
}

/// RFC 2045 §6.7: `=XX` is a byte, a line ending in `=` continues on the
/// next, and trailing whitespace on a line was added in transport.
fn decode_quoted_printable(body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut lines = body.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.trim_end_matches([' ', '\t']);
        let (line, soft_break) = match line.strip_suffix('=') {
            Some(line) => (line, true),
            None => (line, false),
        };
        let mut bytes = line.bytes();
        while let Some(b) = bytes.next() {
            if b == b'=' {
                let hex = [bytes.next(), bytes.next()];
                match hex_byte(hex) {
                    Some(decoded) => out.push(decoded),
                    None => out.extend([b'='].into_iter().chain(hex.into_iter().flatten())),
                }
            } else {
                out.push(b);
            }
        }
        if !soft_break && lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    out
}

fn hex_byte([high, low]: [Option<u8>; 2]) -> Option<u8> {
    let digit = |d: Option<u8>| char::from(d?).to_digit(16);
    Some((digit(high)? * 16 + digit(low)?) as u8)
}

/// One connection. Any I/O error means the client went away; what it had
/// not finished sending is dropped.
async fn session(stream: TcpStream, state: Arc<Mutex<State>>) {
    let (read, write) = stream.into_split();
    let _ = converse(BufReader::new(read), write, &state).await;
}

/// A transaction between MAIL FROM and the end of DATA.
struct Envelope {
    from: String,
    to: Vec<String>,
    /// Decided at its first RCPT, by [`SmtpSink::reject_next`].
    rejected: Option<bool>,
}

async fn converse<R, W>(
    mut read: BufReader<R>,
    mut write: W,
    state: &Mutex<State>,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write
        .write_all(b"220 127.0.0.1 ESMTP authgate test sink\r\n")
        .await?;
    let mut greeted = false;
    let mut envelope: Option<Envelope> = None;
    while let Some(line) = read_line(&mut read).await? {
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches(['\r', '\n']);
        let (verb, argument) = line.split_once(' ').unwrap_or((line, ""));
        let reply: &str = match verb.to_ascii_uppercase().as_str() {
            "EHLO" => {
                greeted = true;
                envelope = None;
                // No STARTTLS and no AUTH: lettre would try them.
                "250-127.0.0.1 hello\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES"
            }
            "HELO" => {
                greeted = true;
                envelope = None;
                "250 127.0.0.1 hello"
            }
            "MAIL" if !greeted => "503 5.5.1 EHLO or HELO first",
            "MAIL" if envelope.is_some() => "503 5.5.1 MAIL already given",
            "MAIL" => match path_after(argument, "FROM:") {
                Some(from) => {
                    envelope = Some(Envelope {
                        from,
                        to: Vec::new(),
                        rejected: None,
                    });
                    "250 2.1.0 ok"
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>",
            },
            "RCPT" => match (&mut envelope, path_after(argument, "TO:")) {
                (None, _) => "503 5.5.1 MAIL first",
                (Some(_), None) => "501 5.5.4 syntax: RCPT TO:<address>",
                (Some(_), Some(to)) if to.is_empty() => "501 5.1.3 empty recipient",
                (Some(envelope), Some(to)) => {
                    let rejected = *envelope.rejected.get_or_insert_with(|| {
                        let mut state = state.lock();
                        let reject = state.reject > 0;
                        state.reject = state.reject.saturating_sub(1);
                        reject
                    });
                    if rejected {
                        "550 5.1.1 no such user"
                    } else {
                        envelope.to.push(to);
                        "250 2.1.5 ok"
                    }
                }
            },
            "DATA" => match envelope.take() {
                Some(taken) if !taken.to.is_empty() => {
                    write
                        .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let Some(data) = read_data(&mut read).await? else {
                        return Ok(());
                    };
                    let mut state = state.lock();
                    if state.fail > 0 {
                        state.fail -= 1;
                        "451 4.3.0 try again later"
                    } else {
                        state.messages.push(Received {
                            from: taken.from,
                            to: taken.to,
                            data,
                        });
                        "250 2.0.0 ok: queued"
                    }
                }
                kept => {
                    envelope = kept;
                    "503 5.5.1 RCPT first"
                }
            },
            "RSET" => {
                envelope = None;
                "250 2.0.0 ok"
            }
            "NOOP" => "250 2.0.0 ok",
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "502 5.5.2 command not implemented",
        };
        // One write per reply: two small ones meet Nagle and delayed ACKs,
        // 40 ms a command.
        write.write_all(format!("{reply}\r\n").as_bytes()).await?;
    }
    Ok(())
}

/// One line with its line end; `None` when the client hung up (in the middle
/// of a line too). A line longer than [`MAX_LINE`] is an error.
async fn read_line<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    (&mut *read)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await?;
    if line.ends_with(b"\n") {
        Ok(Some(line))
    } else if line.len() as u64 >= MAX_LINE {
        Err(std::io::Error::other("line too long"))
    } else {
        Ok(None)
    }
}

/// The message up to the `.` line, dot-unstuffed, CRLF kept; `None` when
/// the client hung up first.
async fn read_data<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
) -> std::io::Result<Option<String>> {
    let mut data = Vec::new();
    loop {
        let Some(line) = read_line(read).await? else {
            return Ok(None);
        };
        if line == b".\r\n" || line == b".\n" {
            return Ok(Some(String::from_utf8_lossy(&data).into_owned()));
        }
        // RFC 5321 §4.5.2: the client doubled every leading dot.
        let line = line.strip_prefix(b".").unwrap_or(&line);
        data.extend_from_slice(line);
    }
}

/// The address in `FROM:<a@b> PARAMS` (or `TO:`), without the brackets;
/// `Some("")` for the null reverse path `<>`.
fn path_after(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let path = argument[keyword.len()..].trim_start();
    let path = path.strip_prefix('<')?;
    let end = path.find('>')?;
    Some(path[..end].to_owned())
}
