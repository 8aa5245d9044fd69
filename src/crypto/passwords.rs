//! Argon2id password hashing on a bounded pool of worker threads.
//!
//! Hashing is deliberately expensive (m=19456 KiB, t=2, p=1 by default, the
//! OWASP recommendation), so it never runs on the async runtime: a fixed set of
//! threads takes jobs from a bounded queue that serves its clients in turn
//! (see [`super::queue`]). Concurrency is capped; a full queue is answered at
//! once with "overloaded", and a client with too many jobs waiting with
//! "busy", rather than letting a login flood pile up work or crowd out
//! everyone else's logins.
//!
//! Each worker keeps one argon2 memory buffer for its whole life, so memory is
//! exactly workers × m: allocating 19 MiB per hash instead leaves the
//! allocator holding several heaps of freed buffers, and costs page faults.

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordVerifier as _, Version,
    password_hash::phc::{Output, ParamsString, Salt},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::oneshot;

use super::queue::{FairQueue, Refused};

#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("the password hashing queue is full")]
    Overloaded,
    #[error("this client has too many password checks waiting")]
    ClientBusy {
        /// The most checks one client may have waiting.
        per_client: u32,
    },
    #[error("password hashing failed: {0}")]
    Failed(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    pub matches: bool,
    /// The stored hash uses other parameters than the configured ones.
    pub needs_rehash: bool,
}

/// A job gets the worker's argon2 memory (empty until the first hash).
type Job = Box<dyn FnOnce(&mut Vec<Block>) + Send>;

/// A handle to the hashing pool; clones share the pool.
#[derive(Clone)]
pub struct PasswordHasher {
    inner: Arc<Inner>,
}

/// Whose job it is: the client IP, for the service.
pub type Client = IpAddr;

/// The client of work that no remote client asked for (commands, start-up).
pub const NO_CLIENT: Client = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

struct Inner {
    jobs: Arc<FairQueue<Client, Job>>,
    params: Params,
    /// Verified against when the user does not exist, so that an unknown user
    /// costs the same time as a wrong password (no user enumeration by timing).
    dummy_hash: String,
    /// How long a check with the configured parameters takes here, in
    /// nanoseconds (a moving average).
    check_cost: AtomicU64,
}

impl Drop for Inner {
    /// The last handle is gone: the workers finish what is queued and stop.
    fn drop(&mut self) {
        self.jobs.close();
    }
}

impl PasswordHasher {
    /// Starts `workers` hashing threads with room for `queue` waiting jobs,
    /// at most `per_client` of them from one client.
    pub fn new(
        params: Params,
        workers: usize,
        queue: usize,
        per_client: usize,
    ) -> anyhow::Result<Self> {
        let jobs = Arc::new(FairQueue::<Client, Job>::new(queue, per_client));
        for i in 0..workers.max(1) {
            let jobs = Arc::clone(&jobs);
            thread::Builder::new()
                .name(format!("authgate-hash-{i}"))
                .spawn(move || {
                    lower_thread_priority();
                    let mut memory = Vec::new();
                    while let Some(job) = jobs.pop() {
                        job(&mut memory);
                    }
                })?;
        }
        let started = Instant::now();
        let dummy_hash = hash_with(
            &params,
            "authgate dummy password for timing",
            &mut Vec::new(),
        )
        .map_err(|e| anyhow::anyhow!("cannot compute the dummy hash: {e}"))?;
        let check_cost = AtomicU64::new(nanos(started.elapsed()));
        Ok(Self {
            inner: Arc::new(Inner {
                jobs,
                params,
                dummy_hash,
                check_cost,
            }),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        client: Client,
        work: impl FnOnce(&Params, &mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let (done, result) = oneshot::channel();
        let params = self.inner.params.clone();
        let queued = Instant::now();
        let job: Job = Box::new(move |memory| {
            metrics::gauge!("authgate_hash_queue_depth").decrement(1.0);
            metrics::histogram!("authgate_hash_wait_seconds")
                .record(queued.elapsed().as_secs_f64());
            let _ = done.send(work(&params, memory));
        });
        self.inner.jobs.push(client, job).map_err(|e| match e {
            Refused::Full => HashError::Overloaded,
            Refused::ClientFull => HashError::ClientBusy {
                per_client: u32::try_from(self.inner.jobs.per_client()).unwrap_or(u32::MAX),
            },
            Refused::Closed => HashError::Failed("hashing pool stopped".into()),
        })?;
        metrics::gauge!("authgate_hash_queue_depth").increment(1.0);
        result
            .await
            .map_err(|_| HashError::Failed("hashing worker dropped the job".into()))
    }

    /// Hashes a password into a PHC string with a fresh random salt.
    pub async fn hash(&self, client: Client, password: SecretString) -> Result<String, HashError> {
        self.run(client, move |params, memory| {
            hash_with(params, password.expose_secret(), memory)
        })
        .await?
        .map_err(HashError::Failed)
    }

    /// Checks `password` against `stored`, or against a dummy hash when there
    /// is no stored hash (the result is then always a mismatch).
    pub async fn verify(
        &self,
        client: Client,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verification, HashError> {
        let dummy = stored.is_none();
        let stored = stored.unwrap_or_else(|| self.inner.dummy_hash.clone());
        let (v, took) = self
            .run(client, move |params, memory| {
                let started = Instant::now();
                let v = verify_with(params, password.expose_secret(), &stored, memory);
                (v, started.elapsed())
            })
            .await?;
        let cost = Duration::from_nanos(self.inner.check_cost.load(Ordering::Relaxed));
        if v.needs_rehash {
            // A hash made with older, cheaper parameters checks faster than
            // the dummy hash of an unknown user: wait out the difference, or
            // the answer's timing would tell which accounts exist (and have
            // not logged in since the parameters changed).
            tokio::time::sleep(cost.saturating_sub(took)).await;
        } else {
            let averaged = (cost * 7 + took) / 8;
            self.inner
                .check_cost
                .store(nanos(averaged), Ordering::Relaxed);
        }
        Ok(Verification {
            matches: v.matches && !dummy,
            ..v
        })
    }
}

impl PasswordHasher {
    /// Hashes with `clients` concurrent callers for `duration`: how many
    /// hashes were done, in how long. One caller per worker keeps every
    /// worker busy without queueing.
    pub async fn measure(
        &self,
        clients: usize,
        duration: Duration,
    ) -> Result<(u64, Duration), HashError> {
        let started = Instant::now();
        let deadline = started + duration;
        let clients: Vec<_> = (0..clients)
            .map(|_| {
                let hasher = self.clone();
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        hasher
                            .hash(NO_CLIENT, SecretString::from("benchmark password"))
                            .await?;
                        done += 1;
                    }
                    Ok::<_, HashError>(done)
                })
            })
            .collect();
        let mut total = 0;
        for client in clients {
            total += client
                .await
                .map_err(|e| HashError::Failed(e.to_string()))??;
        }
        Ok((total, started.elapsed()))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Niceness of the hashing threads. Hashing is the one CPU-bound job here;
/// at a lower priority it uses every idle cycle, yet the scheduler runs the
/// async runtime first, so a login flood cannot starve token checks and
/// health probes.
#[cfg(target_os = "linux")]
const HASHING_NICENESS: libc::c_int = 10;

#[cfg(target_os = "linux")]
fn lower_thread_priority() {
    // SAFETY: plain system calls on the calling thread's own id; no memory is
    // shared with the kernel. On Linux, PRIO_PROCESS with a thread id sets
    // that thread's niceness alone. Failure only leaves the default priority.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, HASHING_NICENESS);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_thread_priority() {}

fn argon2(params: &Params) -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
}

/// The first `params.block_count()` blocks of `memory`, growing it if needed.
fn blocks<'m>(memory: &'m mut Vec<Block>, params: &Params) -> &'m mut [Block] {
    let needed = params.block_count();
    if memory.len() < needed {
        memory.resize(needed, Block::new());
    }
    &mut memory[..needed]
}

fn hash_with(params: &Params, password: &str, memory: &mut Vec<Block>) -> Result<String, String> {
    let mut salt = [0u8; Salt::RECOMMENDED_LENGTH];
    rand::fill(&mut salt);
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2(params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            &salt,
            &mut out,
            blocks(memory, params),
        )
        .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

fn verify_with(
    params: &Params,
    password: &str,
    stored: &str,
    memory: &mut Vec<Block>,
) -> Verification {
    let Ok(parsed) = PasswordHash::new(stored) else {
        return Verification {
            matches: false,
            needs_rehash: false,
        };
    };
    let current = parsed.algorithm == argon2::ARGON2ID_IDENT
        && parsed.version == Some(Version::V0x13.into())
        && Params::try_from(&parsed).is_ok_and(|p| {
            p.m_cost() == params.m_cost()
                && p.t_cost() == params.t_cost()
                && p.p_cost() == params.p_cost()
        });
    // Hashes in the current form are checked in the worker's own memory;
    // anything older goes through the crate's general (allocating) path.
    let matches = if current {
        verify_in_memory(password, &parsed, memory).unwrap_or(false)
    } else {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    };
    Verification {
        matches,
        needs_rehash: !current,
    }
}

fn verify_in_memory(
    password: &str,
    parsed: &PasswordHash,
    memory: &mut Vec<Block>,
) -> Option<bool> {
    let params = Params::try_from(parsed).ok()?;
    let (salt, expected) = (parsed.salt.as_ref()?, parsed.hash.as_ref()?);
    let mut out = vec![0u8; expected.len()];
    argon2(&params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt.as_ref(),
            &mut out,
            blocks(memory, &params),
        )
        .ok()?;
    // Output's equality is constant-time.
    Some(Output::new(&out).ok()? == *expected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Params {
        Params::new(1024, 1, 1, None).unwrap()
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_and_no_other() {
        let h = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let phc = h.hash(NO_CLIENT, "tr0ub4dor&3x".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{phc}");
        let ok = h
            .verify(NO_CLIENT, "tr0ub4dor&3x".into(), Some(phc.clone()))
            .await
            .unwrap();
        assert_eq!(
            ok,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let bad = h
            .verify(NO_CLIENT, "tr0ub4dor&3y".into(), Some(phc))
            .await
            .unwrap();
        assert!(!bad.matches);
    }

    #[tokio::test]
    async fn our_phc_strings_and_the_argon2_crates_verify_each_other() {
        use argon2::PasswordHasher as _;
        let h = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let ours = h.hash(NO_CLIENT, "interoperable".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            argon2(&cheap())
                .verify_password(b"interoperable", &parsed)
                .is_ok()
        );
        assert!(
            argon2(&cheap())
                .verify_password(b"interoperablE", &parsed)
                .is_err()
        );

        let theirs = argon2(&cheap())
            .hash_password(b"the other way")
            .unwrap()
            .to_string();
        let v = h
            .verify(NO_CLIENT, "the other way".into(), Some(theirs.clone()))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        assert!(
            !h.verify(NO_CLIENT, "the other wax".into(), Some(theirs))
                .await
                .unwrap()
                .matches
        );
    }

    #[tokio::test]
    async fn a_missing_user_never_verifies() {
        let h = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let v = h
            .verify(NO_CLIENT, "authgate dummy password for timing".into(), None)
            .await
            .unwrap();
        assert!(!v.matches);
    }

    #[tokio::test]
    async fn a_hash_with_old_parameters_asks_for_a_rehash() {
        let old = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let phc = old
            .hash(NO_CLIENT, "a fine passphrase".into())
            .await
            .unwrap();
        let new = PasswordHasher::new(Params::new(2048, 1, 1, None).unwrap(), 1, 4, 4).unwrap();
        let v = new
            .verify(NO_CLIENT, "a fine passphrase".into(), Some(phc))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
    }

    #[tokio::test]
    async fn checking_a_cheaper_old_hash_waits_out_a_current_checks_time() {
        let old = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let phc = old
            .hash(NO_CLIENT, "a fine passphrase".into())
            .await
            .unwrap();
        let new = PasswordHasher::new(Params::new(2048, 1, 1, None).unwrap(), 1, 4, 4).unwrap();
        // As if a current check took 300 ms here: an old-parameter check,
        // which takes about a millisecond, must not answer sooner.
        let cost = Duration::from_millis(300);
        new.inner.check_cost.store(nanos(cost), Ordering::Relaxed);
        let started = Instant::now();
        let v = new
            .verify(NO_CLIENT, "wrong".into(), Some(phc))
            .await
            .unwrap();
        assert!(v.needs_rehash && !v.matches);
        assert!(started.elapsed() >= cost, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn a_garbled_stored_hash_is_a_mismatch_not_an_error() {
        let h = PasswordHasher::new(cheap(), 1, 4, 4).unwrap();
        let v = h
            .verify(
                NO_CLIENT,
                "whatever".into(),
                Some("not a phc string".into()),
            )
            .await
            .unwrap();
        assert!(!v.matches);
    }

    #[tokio::test]
    async fn a_full_queue_is_refused_at_once() {
        // One slow worker, a queue of one: of many simultaneous jobs some must be refused.
        let slow = Params::new(64 * 1024, 3, 1, None).unwrap();
        let h = PasswordHasher::new(slow, 1, 1, 1).unwrap();
        let jobs = (0..8).map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.hash(NO_CLIENT, "some password".into()).await })
        });
        let results = futures::future::join_all(jobs).await;
        let refused = results
            .iter()
            .filter(|r| matches!(r.as_ref().unwrap(), Err(HashError::Overloaded)))
            .count();
        assert!(refused >= 1, "expected at least one refusal");
        assert!(refused < 8, "expected some jobs to run");
    }
}
