//! SQLite on a disk that fills up: writes fail while it is full, readiness
//! says so, and the service heals by itself once space is back. The disk is
//! a small tmpfs mounted for the test, which needs root (CI runs as root).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use libtest_mimic::Trial;
use reqwest::StatusCode;

use crate::{
    common::{Backend, TestDb, trial},
    helpers::{PASSWORD, TestApp, Tokens},
};

/// The tests of this module; ignored where a tmpfs cannot be mounted
/// (not root), except under CI, where they must run.
pub fn trials(_pg: bool) -> Vec<Trial> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let required = std::env::var_os("CI").is_some()
        || std::env::var_os("AUTHGATE_TEST_REQUIRE_POSTGRES").is_some();
    vec![
        trial(
            module_path!(),
            Backend::Sqlite,
            "a_full_disk_fails_writes_shows_in_readyz_and_heals_once_space_returns",
            false,
            |_| a_full_disk_fails_writes_shows_in_readyz_and_heals_once_space_returns(),
        )
        .with_ignored_flag(!root && !required),
    ]
}

/// A tmpfs of a few MiB, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("authgate-disk-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs at {path:?} needs root");
        Self { path }
    }

    /// Writes a file until the disk is full; removing it gives the space back.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path.join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        loop {
            if file.write_all(&chunk).and_then(|()| file.flush()).is_err() {
                break;
            }
        }
        // The last bytes too: smaller writes until nothing more fits.
        while file
            .write_all(&[0u8; 512])
            .and_then(|()| file.sync_all())
            .is_ok()
        {}
        filler
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

async fn a_full_disk_fails_writes_shows_in_readyz_and_heals_once_space_returns() {
    let disk = SmallDisk::mount("8m");
    let app = TestApp::builder()
        .spawn_on(TestDb::sqlite_in(disk.path()))
        .await;
    app.create_user("nora").await;
    let before = app.tokens("nora").await;

    let filler = disk.fill();
    let res = app.login("nora", PASSWORD).await;
    assert!(res.status().is_server_error(), "{}", res.status());
    let res = app.refresh(&before.refresh).await;
    assert!(res.status().is_server_error(), "{}", res.status());
    assert_eq!(
        app.get("/readyz", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a database that takes no writes is not ready"
    );

    std::fs::remove_file(filler).unwrap();
    assert_eq!(app.get("/readyz", None).await.status(), StatusCode::OK);
    // Logins and refreshes work again, without a restart.
    let after = app.tokens("nora").await;
    let res = app.refresh(&after.refresh).await;
    assert_eq!(res.status(), StatusCode::OK);
    let rotated = Tokens::from(res.json::<serde_json::Value>().await.unwrap());
    assert_eq!(app.me_status(&rotated.access).await, StatusCode::OK);
    // The refresh that failed on the full disk used nothing up.
    assert_eq!(app.refresh(&before.refresh).await.status(), StatusCode::OK);
    drop(app);
}
