//! Signals: the first SIGTERM or SIGINT cancels the token (graceful drain); a second SIGINT
//! exits at once with status 130.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGTERM/SIGINT; exits the process on a second SIGINT.
pub fn spawn_handler(token: CancellationToken) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, draining"),
            _ = int.recv() => tracing::info!("SIGINT received, draining (press Ctrl-C again to exit at once)"),
        }
        token.cancel();
        int.recv().await;
        tracing::warn!("second SIGINT, exiting without waiting");
        std::process::exit(130);
    });
    Ok(())
}
