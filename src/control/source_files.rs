//! SourceFiles: watches the sources directory (`config/sources`, or
//! `GLEANER_SOURCES_DIR`) and hands what it holds to the Orchestrator
//! ([`OrchestratorMsg::SyncFiles`]), which writes the registry through the
//! API's path. Started by the NodeSupervisor after the Orchestrator.
//!
//! It reads the directory at start, when the directory changes (inotify and
//! its kin through `notify`, debounced by [`DEBOUNCE`]), and every
//! [`RESCAN_EVERY`] in case an event was missed (network filesystems, a
//! directory created after start, mounts swapped under it). A read whose
//! files are byte for byte those of the last applied read changes nothing
//! and is not sent. Every file is parsed whole ([`parse_source_file`]); a
//! broken one is logged with its name and the field at fault, shown in
//! `/debug/state` (`source_files`), and its sources stay as they were.
//!
//! A node on which the directory does not exist leaves file-managed sources
//! alone: in a cluster, only nodes that hold the directory apply it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use notify::Watcher;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use serde::Serialize;

use super::orchestrator::{FileSync, FileSyncOutcome, OrchestratorMsg};
use crate::cluster::groups::ORCHESTRATOR;
use crate::domain::spec::files::{parse_source_file, FileFormat, MAX_SOURCE_FILE_BYTES};
use crate::supervision::{ask_named, ASK_TIMEOUT};

/// Quiet time after a change event before the directory is read (an editor's
/// save is several events).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How often the directory is read without an event.
pub const RESCAN_EVERY: Duration = Duration::from_secs(10);
/// Most source files read from the directory.
pub const MAX_SOURCE_FILES: usize = 1000;

pub struct SourceFiles;

pub struct SourceFilesArgs {
    /// The sources directory.
    pub dir: PathBuf,
}

#[derive(RactorMessage)]
pub enum SourceFilesMsg {
    /// The directory changed (from the watcher): read it after [`DEBOUNCE`].
    Changed,
    /// Read the directory now.
    Rescan,
    Stats(RpcReplyPort<SourceFilesStats>),
}

/// One file as last read.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileStatus {
    /// The file's name in the sources directory.
    pub path: String,
    /// The sources it defines (none when broken).
    pub sources: Vec<String>,
    /// Why it is broken; its sources then stay as they were.
    pub error: Option<String>,
    /// The field at fault in a broken file, when one is (`sources[1].url`).
    pub field: Option<String>,
}

/// The actor's snapshot, shown in `/debug/state`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SourceFilesStats {
    pub dir: String,
    /// False when the directory does not exist (files are then not applied).
    pub exists: bool,
    /// Whether change events arrive (else only the periodic read sees changes).
    pub watching: bool,
    pub files: Vec<FileStatus>,
    /// Reads that were applied (sent to the Orchestrator).
    pub syncs: u64,
    pub last_sync: Option<DateTime<Utc>>,
    pub last_outcome: Option<FileSyncOutcome>,
    pub last_error: Option<String>,
}

pub struct SourceFilesState {
    dir: PathBuf,
    watcher: Option<notify::RecommendedWatcher>,
    /// A read is scheduled (debouncing).
    scheduled: bool,
    /// The files of the last applied read, by name: their contents' hashes.
    applied: Option<BTreeMap<String, blake3::Hash>>,
    stats: SourceFilesStats,
}

/// One read of the directory: each source file's bytes (or why it could not
/// be read), by name.
fn read_dir(dir: &Path) -> std::io::Result<BTreeMap<String, Result<Vec<u8>, String>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if FileFormat::of(&name).is_none() {
            continue;
        }
        // Following symlinks (mounted configs are often links).
        let meta = match std::fs::metadata(entry.path()) {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) => {
                files.insert(name, Err(format!("unreadable: {e}")));
                continue;
            }
        };
        if files.len() >= MAX_SOURCE_FILES {
            tracing::warn!(dir = %dir.display(), limit = MAX_SOURCE_FILES, "too many source files; the rest are ignored");
            break;
        }
        let read = if meta.len() > MAX_SOURCE_FILE_BYTES {
            Err(format!("larger than {MAX_SOURCE_FILE_BYTES} bytes"))
        } else {
            std::fs::read(entry.path()).map_err(|e| format!("unreadable: {e}"))
        };
        files.insert(name, read);
    }
    Ok(files)
}

/// Parses every file: the sync to apply and each file's status. An id
/// defined by two files breaks the second (in name order).
fn parse_all(files: &BTreeMap<String, Result<Vec<u8>, String>>) -> (FileSync, Vec<FileStatus>) {
    let mut sync = FileSync::default();
    let mut statuses = Vec::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (name, bytes) in files {
        let format = FileFormat::of(name).expect("only source files are read");
        let parsed = bytes.as_ref().map_err(|e| (None, e.clone())).and_then(|b| {
            let text = std::str::from_utf8(b).map_err(|_| (None, "not UTF-8 text".to_owned()))?;
            // The message alone: the field is shown beside it.
            parse_source_file(format, text).map_err(|e| {
                let field = (!e.field.is_empty()).then(|| e.field.clone());
                (field, e.message)
            })
        });
        let parsed = parsed.and_then(|specs| {
            for (i, spec) in specs.iter().enumerate() {
                if let Some(other) = owner.get(&spec.id) {
                    return Err((
                        Some(if specs.len() > 1 {
                            format!("[{i}].id")
                        } else {
                            "id".into()
                        }),
                        format!(
                            "source '{}' is already defined by the file '{other}'",
                            spec.id
                        ),
                    ));
                }
            }
            Ok(specs)
        });
        match parsed {
            Ok(specs) => {
                for spec in &specs {
                    owner.insert(spec.id.clone(), name.clone());
                }
                statuses.push(FileStatus {
                    path: name.clone(),
                    sources: specs.iter().map(|s| s.id.clone()).collect(),
                    error: None,
                    field: None,
                });
                sync.good.insert(name.clone(), specs);
            }
            Err((field, error)) => {
                statuses.push(FileStatus {
                    path: name.clone(),
                    sources: Vec::new(),
                    error: Some(error),
                    field,
                });
                sync.broken.insert(name.clone());
            }
        }
    }
    (sync, statuses)
}

impl SourceFilesState {
    /// Starts watching the directory if it exists and is not watched yet.
    fn watch(&mut self, myself: &ActorRef<SourceFilesMsg>) {
        if self.watcher.is_some() {
            return;
        }
        let me = myself.clone();
        let made = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if event.is_ok_and(|e| !e.kind.is_access()) {
                let _ = me.cast(SourceFilesMsg::Changed);
            }
        })
        .and_then(|mut w| {
            w.watch(&self.dir, notify::RecursiveMode::NonRecursive)?;
            Ok(w)
        });
        match made {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot watch the sources directory; reading it every {} s", RESCAN_EVERY.as_secs());
            }
        }
        self.stats.watching = self.watcher.is_some();
    }

    async fn rescan(&mut self, myself: &ActorRef<SourceFilesMsg>) {
        let dir = self.dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            if !dir.is_dir() {
                return Ok(None);
            }
            read_dir(&dir).map(Some)
        })
        .await;
        let files = match read {
            Ok(Ok(Some(files))) => files,
            Ok(Ok(None)) => {
                if self.stats.exists {
                    tracing::warn!(dir = %self.dir.display(), "the sources directory is gone; file-managed sources are left as they are");
                }
                self.stats.exists = false;
                self.stats.files.clear();
                self.watcher = None;
                self.stats.watching = false;
                self.applied = None;
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "the sources directory is unreadable");
                self.stats.last_error = Some(format!("unreadable: {e}"));
                return;
            }
            Err(e) => {
                self.stats.last_error = Some(e.to_string());
                return;
            }
        };
        self.stats.exists = true;
        self.watch(myself);
        let hashes: BTreeMap<String, blake3::Hash> = files
            .iter()
            .map(|(name, bytes)| {
                let hash = match bytes {
                    Ok(b) => blake3::hash(b),
                    Err(e) => blake3::hash(e.as_bytes()),
                };
                (name.clone(), hash)
            })
            .collect();
        if self.applied.as_ref() == Some(&hashes) {
            return;
        }
        let (sync, statuses) = parse_all(&files);
        for status in &statuses {
            let before = self.stats.files.iter().find(|f| f.path == status.path);
            if let (Some(error), true) = (&status.error, before != Some(status)) {
                tracing::warn!(dir = %self.dir.display(), file = %status.path, field = status.field.as_deref().unwrap_or(""), %error, "source file is broken; its sources stay as they were");
            }
        }
        self.stats.files = statuses;
        let broken: BTreeSet<String> = sync.broken.clone();
        match ask_named(
            ORCHESTRATOR,
            |r| OrchestratorMsg::SyncFiles(sync, r),
            ASK_TIMEOUT * 2,
        )
        .await
        {
            Ok(Ok(outcome)) => {
                self.applied = Some(hashes);
                self.stats.syncs += 1;
                self.stats.last_sync = Some(Utc::now());
                self.stats.last_error = None;
                let changed = outcome.created.len() + outcome.updated.len() + outcome.deleted.len();
                tracing::info!(dir = %self.dir.display(), files = files.len(), broken = broken.len(), changed, "sources directory applied");
                self.stats.last_outcome = Some(outcome);
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "sources directory not applied; retrying at the next read");
                self.stats.last_error = Some(e.to_string());
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "sources directory not applied; retrying at the next read");
                self.stats.last_error = Some(e.to_string());
            }
        }
    }
}

impl Actor for SourceFiles {
    type Msg = SourceFilesMsg;
    type State = SourceFilesState;
    type Arguments = SourceFilesArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SourceFilesArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(RESCAN_EVERY, || SourceFilesMsg::Rescan);
        myself.cast(SourceFilesMsg::Rescan)?;
        Ok(SourceFilesState {
            stats: SourceFilesStats {
                dir: args.dir.display().to_string(),
                ..SourceFilesStats::default()
            },
            dir: args.dir,
            watcher: None,
            scheduled: false,
            applied: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SourceFilesMsg::Changed => {
                if !state.scheduled {
                    state.scheduled = true;
                    myself.send_after(DEBOUNCE, || SourceFilesMsg::Rescan);
                }
            }
            SourceFilesMsg::Rescan => {
                state.scheduled = false;
                state.rescan(&myself).await;
            }
            SourceFilesMsg::Stats(reply) => {
                let _ = reply.send(state.stats.clone());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str) -> String {
        format!(
            r#"{{"id": "{id}", "url": "https://example.org/", "collection": "c", "extract": {{"fields": {{"t": "h1"}}}}}}"#
        )
    }

    #[test]
    fn a_broken_file_and_a_second_definition_are_reported_and_kept_apart() {
        let mut files = BTreeMap::new();
        files.insert("a.json".to_owned(), Ok(spec("one").into_bytes()));
        files.insert(
            "b.json".to_owned(),
            Ok(format!("[{}]", spec("one")).into_bytes()),
        );
        files.insert("c.yaml".to_owned(), Ok(b"id: [".to_vec()));
        files.insert("d.json".to_owned(), Err("unreadable: denied".to_owned()));
        let (sync, statuses) = parse_all(&files);
        assert_eq!(sync.good.keys().collect::<Vec<_>>(), ["a.json"]);
        assert_eq!(
            sync.broken.iter().collect::<Vec<_>>(),
            ["b.json", "c.yaml", "d.json"]
        );
        let b = statuses.iter().find(|s| s.path == "b.json").unwrap();
        assert_eq!(b.field.as_deref(), Some("id"));
        assert!(b.error.as_deref().unwrap().contains("a.json"), "{b:?}");
        let c = statuses.iter().find(|s| s.path == "c.yaml").unwrap();
        assert!(c.error.as_deref().unwrap().contains("YAML"), "{c:?}");
    }
}
