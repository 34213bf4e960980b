//! SIGTERM / SIGINT handling, installed before anything slow starts so a
//! signal during startup still means a clean stop, not the default kill.

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Installed handlers for SIGTERM and SIGINT.
pub struct ShutdownSignal {
    term: Signal,
    int: Signal,
}

impl ShutdownSignal {
    /// Installs the handlers now (must run inside the tokio runtime).
    pub fn install() -> std::io::Result<Self> {
        Ok(ShutdownSignal { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Resolves on the first SIGTERM or SIGINT (also one received before the
    /// call), naming it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
