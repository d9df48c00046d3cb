//! Records the git commit, build date and rustc version for `showoff --version` and `/version`.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The workspace's one civil-date function (`showoff_core::time`), compiled into the build
/// script as a file: it uses only `std`, and a build dependency on the whole crate would build
/// its dependencies a second time for the host.
#[allow(dead_code)]
#[path = "../showoff-core/src/time.rs"]
mod time;

fn main() {
    let commit =
        output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    let (y, m, d) = time::civil_from_days(secs.div_euclid(86_400));
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SHOWOFF_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=SHOWOFF_BUILD_DATE={y:04}-{m:02}-{d:02}");
    println!("cargo:rustc-env=SHOWOFF_RUSTC={rustc_version}");
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=../showoff-core/src/time.rs");
}
