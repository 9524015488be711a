//! Telling a service manager how the daemon is doing (`sd_notify`), when it runs under one
//! (`NOTIFY_SOCKET` is set; with `Type=notify`, see `contrib/orgloop.service`): `READY=1` once it
//! listens, `RELOADING=1` with `MONOTONIC_USEC` while a SIGHUP reload runs and `READY=1` after,
//! `STOPPING=1` at shutdown, and `WATCHDOG=1` at half the `WATCHDOG_USEC` period. Without a
//! service manager every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!("cannot notify the service manager: {e}");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => tracing::warn!("cannot read the monotonic clock for the service manager: {e}"),
    }
}

pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Beats the service manager's watchdog from a task of the daemon's runtime, if it asks for one;
/// a daemon whose runtime is stuck stops beating, and is restarted.
pub fn spawn_watchdog() {
    let Some(period) = watchdog_period() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            send(&[NotifyState::Watchdog]);
            tokio::time::sleep(period).await;
        }
    });
}

/// Half of `WATCHDOG_USEC`, when it is set for this process: as sd_watchdog_enabled(3) reads it,
/// `WATCHDOG_PID`, when set, must be this process.
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    let for_us =
        std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.parse() == Ok(std::process::id()));
    (usec > 0 && for_us).then(|| Duration::from_micros(usec) / 2)
}
