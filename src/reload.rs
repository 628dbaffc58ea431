//! Hot reload: re-reads the rule files when they change, or on SIGHUP, and installs them.
//!
//! Three triggers, one procedure:
//! - inotify (through `notify`) on the rule path and its parent directory, so that an edit, a
//!   rename over the file, or a Kubernetes ConfigMap's `..data` symlink swap is seen at once;
//! - a poll every `poll_interval`, for filesystems that send no events (network mounts, some
//!   container overlays) and for a watch that went stale when a symlink moved;
//! - SIGHUP, which reloads even when nothing seems to have changed.
//!
//! A look costs a `stat` per file: the files are read only when a name, size, modification time
//! (to the nanosecond) or inode changed (or on SIGHUP; never by the clock, since re-reading a
//! 100 MB rule file once a minute cost 2 % of a core at idle), then hashed, and parsed only when the hash differs from the
//! last one seen, so neither the poll nor unrelated events in the parent directory cost a read,
//! a parse or a metric. Reading, parsing and installing run on a thread of their own, never on
//! the runtime's workers, so a big rule file never holds up a decision: the running rules
//! decide until the new ones are swapped in. A refused load keeps the running rules, logs every
//! error with file:line:column and counts `config_load_error` once per distinct bad state.

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

/// The reload thread's stack: the rule files' nesting is bounded (`config::limits`), so this is
/// far more than reading them takes.
const RELOAD_STACK: usize = 16 * 1024 * 1024;

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
    let mut seen = Seen {
        files: None,
        hash: loaded_hash,
    };
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
        let files = config::fingerprint(&settings.path);
        if !forced && files.is_some() && files == seen.files {
            continue;
        }
        seen.files = files;
        let (path, rules) = (settings.path.clone(), Arc::clone(&live));
        let hash = seen.hash.clone();
        match on_reload_thread(move || attempt(&path, &rules, hash, forced)).await {
            Some(Some(hash)) => {
                seen.hash = hash;
                // After a symlink swap the old watch follows the old target: watch afresh.
                _watcher = watch(&settings.path, changed_tx.clone());
            }
            Some(None) => {}
            None => seen.files = None,
        }
    }
}

/// What the reloader last saw of the files.
struct Seen {
    files: Option<config::Fingerprint>,
    /// The hash of their contents (or of why they could not be read).
    hash: String,
}

/// Runs `work` on a thread of its own and waits for it; `None` if no thread could be started
/// (then the next look tries again).
async fn on_reload_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    let started = crate::background::spawn("ratelimitd-reload", RELOAD_STACK, move || {
        let _ = done.send(work());
    });
    if let Err(error) = started {
        tracing::warn!(%error, "cannot start the reload thread; trying again at the next look");
        return None;
    }
    result.await.ok()
}

/// Reads the rules and installs them if they changed from `last_seen` (or if `forced`).
/// Returns the new hash when the files differed from the last ones seen.
fn attempt(path: &Path, live: &LiveRules, last_seen: String, forced: bool) -> Option<String> {
    let read = config::read(path);
    let seen = match &read {
        Ok(sources) => sources.hash(),
        Err(errors) => format!("unreadable: {errors}"),
    };
    if !forced && seen == last_seen {
        return None;
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
    Some(seen)
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
