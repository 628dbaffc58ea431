//! Hot reload: re-reads the rule files when they change, or on SIGHUP, and installs them.
//!
//! Three triggers, one procedure:
//! - inotify (through `notify`) on the rule path and its parent directory, so that an edit, a
//!   rename over the file, or a Kubernetes ConfigMap's `..data` symlink swap is seen at once;
//! - a poll every `poll_interval`, for filesystems that send no events (network mounts, some
//!   container overlays) and for a watch that went stale when a symlink moved;
//! - SIGHUP, which reloads even when nothing seems to have changed.
//!
//! Files are read first and parsed only when their hash differs from the last one seen, so
//! neither the poll nor unrelated events in the parent directory cost a parse or move a
//! metric. A refused load keeps the running rules, logs every error with file:line:column and
//! counts `config_load_error` once per distinct bad state.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::config;
use crate::service::LiveRules;

/// When and where to look for new rules.
#[derive(Debug, Clone)]
pub struct ReloadSettings {
    /// The rule file or directory given to `--config`.
    pub path: PathBuf,
    /// How often the files are read even without a change event.
    pub poll_interval: Duration,
    /// Reload on SIGHUP (the binary; in-process tests leave it off).
    pub on_sighup: bool,
}

/// Events often come in bursts (an editor's truncate then write): wait this long for the rest.
const SETTLE: Duration = Duration::from_millis(50);

/// The reload task; stops when dropped.
pub struct Reloader(tokio::task::JoinHandle<()>);

impl Drop for Reloader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts watching `settings.path`; `loaded_hash` is the hash of the rules in use.
///
/// Call within the runtime: the SIGHUP handler is installed before this returns, so a SIGHUP
/// from then on reloads instead of ending the process.
pub fn start(settings: ReloadSettings, live: Arc<LiveRules>, loaded_hash: String) -> Reloader {
    let hangup = Hangup::new(settings.on_sighup);
    Reloader(tokio::spawn(run(settings, live, loaded_hash, hangup)))
}

async fn run(
    settings: ReloadSettings,
    live: Arc<LiveRules>,
    loaded_hash: String,
    mut hangup: Hangup,
) {
    let (changed_tx, mut changed) = mpsc::channel::<()>(1);
    let mut _watcher = watch(&settings.path, changed_tx.clone());
    let mut poll = tokio::time::interval(settings.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    let mut last_seen = loaded_hash;
    loop {
        let forced = tokio::select! {
            Some(()) = changed.recv() => {
                tokio::time::sleep(SETTLE).await;
                while changed.try_recv().is_ok() {}
                false
            }
            _ = poll.tick() => false,
            () = hangup.recv() => {
                tracing::info!("SIGHUP: reloading the rules");
                true
            }
        };
        if attempt(&settings.path, &live, &mut last_seen, forced) {
            // After a symlink swap the old watch follows the old target: watch afresh.
            _watcher = watch(&settings.path, changed_tx.clone());
        }
    }
}

/// Reads the rules and installs them if they changed (or if `forced`). Returns whether the
/// files differed from the last ones seen.
fn attempt(path: &Path, live: &LiveRules, last_seen: &mut String, forced: bool) -> bool {
    let read = config::read(path);
    let seen = match &read {
        Ok(sources) => sources.hash(),
        Err(errors) => format!("unreadable: {errors}"),
    };
    if !forced && seen == *last_seen {
        return false;
    }
    let parsed = read.and_then(|sources| sources.parse().map(|rules| (rules, sources.hash())));
    match parsed {
        Ok((rules, hash)) => {
            let count = rules.rules().len();
            live.install(rules, hash.clone());
            tracing::info!(path = %path.display(), %hash, rules = count, "rules reloaded");
        }
        Err(errors) => {
            live.metrics().config_refused();
            tracing::warn!(
                path = %path.display(),
                "rules not reloaded, the running rules stay:\n{errors}"
            );
        }
    }
    *last_seen = seen;
    true
}

/// Watches `path` (its entries, if a directory) and its parent directory; `None` if the
/// platform refuses, in which case the poll still finds changes.
fn watch(path: &Path, changed: mpsc::Sender<()>) -> Option<RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|event| changes_files(&event.kind)) {
            // A full channel already holds a wake-up; one is enough.
            let _ = changed.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the rule files; polling only");
            return None;
        }
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut targets = vec![parent];
    if path.is_dir() {
        targets.push(path);
    }
    for target in targets {
        if let Err(error) = watcher.watch(target, RecursiveMode::NonRecursive) {
            tracing::warn!(%error, path = %target.display(), "cannot watch; polling only");
        }
    }
    Some(watcher)
}

/// Whether an event can mean new rules: not a file merely opened or read (our own reads
/// cause those, and would wake us forever), but a write, a create, a rename or a removal.
fn changes_files(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

/// SIGHUP as a stream that never ends when it is off or cannot be installed.
struct Hangup(Option<tokio::signal::unix::Signal>);

impl Hangup {
    fn new(enabled: bool) -> Hangup {
        if !enabled {
            return Hangup(None);
        }
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(signal) => Hangup(Some(signal)),
            Err(error) => {
                tracing::warn!(%error, "cannot watch SIGHUP; reloading on file changes only");
                Hangup(None)
            }
        }
    }

    async fn recv(&mut self) {
        match &mut self.0 {
            Some(signal) => {
                if signal.recv().await.is_none() {
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind, RemoveKind, RenameMode};

    #[test]
    fn only_events_that_can_change_the_rules_wake_the_reloader() {
        let reads = [
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            EventKind::Access(AccessKind::Read),
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
        ];
        for kind in reads {
            assert!(!changes_files(&kind), "{kind:?}");
        }
        let changes = [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)),
            EventKind::Create(CreateKind::File),
            EventKind::Remove(RemoveKind::File),
        ];
        for kind in changes {
            assert!(changes_files(&kind), "{kind:?}");
        }
    }
}
