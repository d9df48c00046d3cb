//! `showoff-chaos`: the chaos scenarios at full size against a built `showoff` binary, with a
//! scorecard on stdout (Markdown rows for docs/reliability.md). `bench/chaos.sh` builds both
//! and runs this inside a private network namespace.
//!
//!   showoff-chaos [--bin PATH] [--quick] [--seed N] [--only cluster]

use std::path::PathBuf;
use std::process::ExitCode;

use showoff_testkit::chaos;

#[tokio::main]
async fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut bin = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("showoff")))
        .unwrap_or_else(|| PathBuf::from("showoff"));
    let (mut quick, mut seed, mut only_cluster) = (false, 0x5eed_u64, false);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bin" => bin = args.next().map(PathBuf::from).expect("--bin PATH"),
            "--quick" => quick = true,
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).expect("--seed N"),
            "--only" if args.next().as_deref() == Some("cluster") => only_cluster = true,
            other => {
                eprintln!(
                    "unknown argument {other:?}; usage: showoff-chaos [--bin PATH] [--quick] [--seed N] [--only cluster]"
                );
                return ExitCode::from(2);
            }
        }
    }
    // 100 cuts in all: ten clients cut ten times each keep the run inside a few minutes
    // although each client's backoff doubles (it resets only after 10 s of stable session).
    let (clients, cuts, rounds, drains, kills, restarts, crowd, failovers) = if quick {
        (2, 3, 2, 1, 1, 2, 500, 2)
    } else {
        (10, 10, 25, 5, 10, 5, 10_000, 20)
    };
    let started = std::time::Instant::now();
    let mut scores = Vec::new();
    if !only_cluster {
        let sizes = (clients, cuts, rounds, drains, kills, restarts, crowd);
        scores = single_instance(&bin, sizes, seed).await;
    }
    scores.push(chaos::cluster_failover(&bin, failovers).await);
    scores.push(chaos::cluster_drain(&bin, drains).await);
    report(&scores, seed, started)
}

/// The scenarios of one instance, at the sizes given.
async fn single_instance(
    bin: &std::path::Path,
    sizes: (usize, usize, usize, usize, usize, usize, usize),
    seed: u64,
) -> Vec<chaos::Score> {
    let (clients, cuts, rounds, drains, kills, restarts, crowd) = sizes;
    vec![
        chaos::control_cuts(bin, clients, cuts, seed).await,
        chaos::target_faults(bin, rounds).await,
        chaos::sigterm_under_load(bin, drains).await,
        chaos::client_killed(bin, kills).await,
        chaos::server_restarted(bin, restarts).await,
        chaos::audit_disk(bin).await,
        chaos::crowd(bin, crowd).await,
    ]
}

/// Prints the scorecard; success when every scenario held.
fn report(scores: &[chaos::Score], seed: u64, started: std::time::Instant) -> ExitCode {
    println!("| scenario | invariant | runs | held | worst recovery | figure |");
    println!("| --- | --- | ---: | ---: | ---: | --- |");
    for score in scores {
        println!("{}", score.row());
        for failure in &score.failures {
            eprintln!("[chaos] {}: {failure}", score.scenario);
        }
    }
    eprintln!(
        "[chaos] seed {seed}, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if scores.iter().all(chaos::Score::passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
