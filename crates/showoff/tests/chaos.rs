//! The fast chaos scenarios, at a small size, against the real binary (the full suite:
//! `bench/chaos.sh`, figures in docs/reliability.md).

use std::path::Path;

use showoff_testkit::chaos;

const BIN: &str = env!("CARGO_BIN_EXE_showoff");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_control_link_is_cut_comes_back_with_its_name() {
    let score = chaos::control_cuts(Path::new(BIN), 2, 3, 42).await;
    assert!(score.passed(), "{score:?}");
    assert_eq!(score.runs, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_hangs_resets_or_lies_gets_documented_errors_and_leaks_nothing() {
    let score = chaos::target_faults(Path::new(BIN), 2).await;
    assert!(score.passed(), "{score:?}");
    assert_eq!(score.runs, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_keep_alive_and_streaming_load_loses_nothing() {
    let score = chaos::sigterm_under_load(Path::new(BIN), 1).await;
    assert!(score.passed(), "{score:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_mid_transfer_leaves_a_clean_end_and_its_name_free() {
    let score = chaos::client_killed(Path::new(BIN), 1).await;
    assert!(score.passed(), "{score:?}");
    assert_eq!(score.runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_and_restarted_gets_its_clients_back() {
    let score = chaos::server_restarted(Path::new(BIN), 2).await;
    assert!(score.passed(), "{score:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_is_reported_and_serving_goes_on() {
    let score = chaos::audit_disk(Path::new(BIN)).await;
    assert!(score.passed(), "{score:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_and_slow_crowd_does_not_starve_other_visitors() {
    let score = chaos::crowd(Path::new(BIN), 500).await;
    assert!(score.passed(), "{score:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_tunnel_answers_through_the_balancer_again_with_one_holder() {
    let score = chaos::cluster_failover(Path::new(BIN), 2).await;
    assert!(score.passed(), "{score:?}");
    assert_eq!(score.runs, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_instance_drained_under_load_loses_no_request_and_its_clients_move() {
    let score = chaos::cluster_drain(Path::new(BIN), 1).await;
    assert!(score.passed(), "{score:?}");
    assert_eq!(score.runs, 1);
}
