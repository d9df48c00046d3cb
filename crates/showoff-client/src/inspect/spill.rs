//! Bodies past the per-body cap written whole to a directory, when spilling is asked for
//! (`--inspect-spill DIR`).
//!
//! The relay never writes to disk itself: it copies each chunk into a bounded queue with
//! `try_send` and one writer thread drains it. A full queue (the disk slower than the tunnel)
//! or a spent disk budget leaves that file incomplete and counts the drop; the relay goes on
//! at full speed. A file lives as long as its entry: it is removed when the entry is evicted
//! or cleared, and the directory when the inspector is dropped.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use bytes::Bytes;

use super::Shared;

/// Chunks the writer may be behind by before a file is given up.
const QUEUE: usize = 4096;

const WRITING: u8 = 0;
const COMPLETE: u8 = 1;
const FAILED: u8 = 2;

/// One spilled body on disk.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    written: AtomicU64,
    state: AtomicU8,
    /// The bytes every spilled file holds, for the disk budget.
    disk_used: Arc<AtomicU64>,
}

impl SpillFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size once the whole body is written; `None` while writing or when it was
    /// left incomplete.
    pub fn complete(&self) -> Option<u64> {
        (self.state.load(Ordering::Acquire) == COMPLETE)
            .then(|| self.written.load(Ordering::Acquire))
    }

    fn fail(&self) {
        self.state.store(FAILED, Ordering::Release);
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        self.disk_used
            .fetch_sub(self.written.load(Ordering::Relaxed), Ordering::Relaxed);
        let _ = std::fs::remove_file(&self.path);
    }
}

enum Op {
    Write(Arc<SpillFile>, Bytes),
    Finish(Arc<SpillFile>),
}

/// Hands chunks to the writer thread.
pub(crate) struct Spiller {
    dir: PathBuf,
    queue: SyncSender<Op>,
    disk_budget: u64,
    disk_used: Arc<AtomicU64>,
    next: AtomicU64,
}

impl Spiller {
    /// A spiller writing into a new directory under `parent`, at most `disk_budget` bytes in all.
    pub(crate) fn start(parent: &Path, disk_budget: u64) -> std::io::Result<Self> {
        static SPILLERS: AtomicU64 = AtomicU64::new(0);
        let n = SPILLERS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("showoff-inspect-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (queue, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("showoff-spill".into())
            .spawn(move || write_loop(rx))?;
        Ok(Self {
            dir,
            queue,
            disk_budget,
            disk_used: Arc::new(AtomicU64::new(0)),
            next: AtomicU64::new(1),
        })
    }

    /// A new file for one body.
    pub(crate) fn open(&self) -> SpillSink {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let file = SpillFile {
            path: self.dir.join(format!("body-{n}")),
            written: AtomicU64::new(0),
            state: AtomicU8::new(WRITING),
            disk_used: self.disk_used.clone(),
        };
        SpillSink {
            file: Arc::new(file),
            queue: self.queue.clone(),
            lost: false,
            finished: false,
        }
    }

    /// Bytes on disk now.
    pub(crate) fn disk_used(&self) -> u64 {
        self.disk_used.load(Ordering::Relaxed)
    }
}

impl Drop for Spiller {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The writing end of one spilled body, held by its capture.
pub(crate) struct SpillSink {
    file: Arc<SpillFile>,
    queue: SyncSender<Op>,
    lost: bool,
    finished: bool,
}

impl SpillSink {
    /// Queues `bytes`; a full queue or a spent budget gives the file up.
    pub(crate) fn write(&mut self, bytes: &[u8], shared: &Shared) {
        if self.lost || bytes.is_empty() {
            return;
        }
        let Some(spiller) = &shared.spill else {
            return;
        };
        let len = bytes.len() as u64;
        let used = spiller.disk_used.fetch_add(len, Ordering::Relaxed) + len;
        self.file.written.fetch_add(len, Ordering::Relaxed);
        if used > spiller.disk_budget {
            return self.lose(shared);
        }
        let op = Op::Write(self.file.clone(), Bytes::copy_from_slice(bytes));
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.queue.try_send(op)
        {
            self.lose(shared);
        }
    }

    fn lose(&mut self, shared: &Shared) {
        self.lost = true;
        self.file.fail();
        shared.store.drops.spill.fetch_add(1, Ordering::Relaxed);
    }

    /// The body ended (`closed`: cut by the stream's end); the file is complete once the
    /// writer has caught up.
    pub(crate) fn finish(mut self, closed: bool, shared: &Shared) -> Arc<SpillFile> {
        if closed && !self.lost {
            self.lose(shared);
        }
        self.finished = true;
        if self.queue.try_send(Op::Finish(self.file.clone())).is_err() && !self.lost {
            self.lose(shared);
        }
        self.file.clone()
    }
}

impl Drop for SpillSink {
    /// A body the capture gave up on: the writer closes its file (the file itself goes when
    /// its last holder does).
    fn drop(&mut self) {
        if !self.finished {
            self.file.fail();
            let _ = self.queue.try_send(Op::Finish(self.file.clone()));
        }
    }
}

/// The writer thread: appends chunks to their files until every sender is gone.
fn write_loop(rx: Receiver<Op>) {
    let mut open: HashMap<PathBuf, std::fs::File> = HashMap::new();
    while let Ok(op) = rx.recv() {
        match op {
            Op::Write(file, bytes) => {
                if file.state.load(Ordering::Acquire) == FAILED {
                    open.remove(file.path());
                    continue;
                }
                let handle = match open.get_mut(file.path()) {
                    Some(handle) => handle,
                    None => match std::fs::File::create(file.path()) {
                        Ok(handle) => open.entry(file.path().to_path_buf()).or_insert(handle),
                        Err(_) => {
                            file.fail();
                            continue;
                        }
                    },
                };
                if handle.write_all(&bytes).is_err() {
                    file.fail();
                    open.remove(file.path());
                }
            }
            Op::Finish(file) => {
                let closed = open.remove(file.path());
                if closed.is_some() && file.state.load(Ordering::Acquire) == WRITING {
                    file.state.store(COMPLETE, Ordering::Release);
                }
            }
        }
    }
}
