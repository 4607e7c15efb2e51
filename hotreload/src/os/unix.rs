//! Unix: `dlopen` with `RTLD_NOW | RTLD_LOCAL`; what `/proc` tells (Linux) about which images
//! are mapped and where the process's threads are.

use std::path::Path;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

/// Opens `path` with every symbol resolved now (an unresolved symbol fails here, not at the
/// first call) and local visibility (two versions' symbols never interpose), and takes over
/// its thread-local destructors (see [`super::thread_exit`]) where its file has `slots`.
pub(crate) fn open_library(
    path: &Path,
    slots: &super::DtorSlots,
) -> Result<
    (
        libloading::Library,
        Option<std::sync::Arc<super::ImageDtors>>,
    ),
    libloading::Error,
> {
    // SAFETY: loading a library runs its initialisers (any code its author put in
    // `.init_array`, a C library's constructors, a crate like `ctor`), which nothing here can
    // check: that is the trust model. The runtime opens only a private shadow copy, in a 0700
    // directory of this process's user, of bytes read from an artifact the host registered
    // and that passed the permission check of `stage` (no other user could have written it)
    // and, when the host pinned digests, whose SHA-256 is one of them.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }?;
    let handle = library.into_raw();
    let dtors = super::thread_exit::take_over(handle, slots);
    // SAFETY: the handle `into_raw` just gave up, open, owned again by one `Library`.
    let library = unsafe { Library::from_raw(handle) };
    Ok((library.into(), dtors))
}

/// Whether `a` and `b` name one file (the same device and inode: a hard link counts).
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Tries for an exclusive `flock` on `file`, as cargo takes on its build directory, without
/// waiting: `Ok(false)` while another holds it. Released when the file is closed. (`File::
/// try_lock` does the same from Rust 1.89, above this crate's minimum.)
pub(crate) fn try_lock_exclusive(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` owns and keeps open for this call; it reads or
    // writes no memory of this process.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(err),
    }
}

/// Whether an image loaded from `path` is mapped into this process; `None` without `/proc`.
pub(crate) fn is_mapped(path: &Path) -> Option<bool> {
    mappings(path).map(|(image, _)| !image.is_empty())
}

/// The threads of this process when a version was opened: a thread among them was not started
/// by that version's code.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadCensus {
    /// Thread ids, sorted.
    tids: Vec<u32>,
    /// Clock ticks since boot when the census was taken (the unit of a thread's start time).
    taken_at: u64,
    /// The thread that took the census, and its start time: it was running before the
    /// version was opened even if it started in the same clock tick.
    taker: Option<(u32, u64)>,
}

/// Threads the runtime itself started (the watcher, build threads): they run module code only
/// through calls and transactions, never a closed version's, so the check for threads inside
/// a version skips them (their stacks hold stale words from the reloads they ran).
static RUNTIME_THREADS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn current_tid() -> Option<u32> {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name()?.to_str()?.parse::<u32>().ok())
}

fn runtime_threads() -> std::sync::MutexGuard<'static, Vec<u32>> {
    RUNTIME_THREADS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Marks the calling thread as one of the runtime's own until the guard drops.
pub(crate) struct RuntimeThread(Option<u32>);

impl RuntimeThread {
    pub(crate) fn enter() -> Self {
        let tid = current_tid();
        if let Some(tid) = tid {
            runtime_threads().push(tid);
        }
        RuntimeThread(tid)
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(tid) = self.0 {
            runtime_threads().retain(|&t| t != tid);
        }
    }
}

/// The clock ticks per second `/proc` reports start times in (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// Takes a census of this process's threads, if `/proc` is there.
pub(crate) fn thread_census() -> Option<ThreadCensus> {
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let seconds: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    let mut tids = thread_ids().ok()?;
    tids.sort_unstable();
    let taker = current_tid().and_then(|tid| Some((tid, thread_start(tid)?)));
    Some(ThreadCensus {
        tids,
        // Rounded down: a thread started in the same tick counts as started after (unless it
        // is the one taking the census).
        taken_at: (seconds * USER_HZ) as u64,
        taker,
    })
}

fn thread_ids() -> std::io::Result<Vec<u32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task")? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
}

/// A thread's start time in clock ticks since boot (field 22 of its `stat`).
fn thread_start(tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}

/// Where a thread is, from its `syscall` file.
enum Whereabouts {
    /// It has exited.
    Exited,
    /// It runs on a CPU: where cannot be read now.
    Running,
    /// Preempted or blocked, with its saved stack pointer and program counter.
    Stopped { sp: u64, pc: u64 },
}

fn whereabouts(tid: u32) -> std::io::Result<Whereabouts> {
    let text = match std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")) {
        Ok(text) => text,
        // The task is gone (or going: its files answer ESRCH while it is reaped).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound || err.raw_os_error() == Some(3) => {
            return Ok(Whereabouts::Exited);
        }
        Err(err) => return Err(err),
    };
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.first() == Some(&"running") {
        return Ok(Whereabouts::Running);
    }
    // `<nr> <six arguments> <sp> <pc>`, or `-1 <sp> <pc>` when blocked outside a syscall.
    let hex = |field: &&str| u64::from_str_radix(field.trim_start_matches("0x"), 16).ok();
    let unreadable = || std::io::Error::other(format!("cannot parse {text:?}"));
    let pc = fields.last().and_then(hex).ok_or_else(unreadable)?;
    let sp = fields
        .len()
        .checked_sub(2)
        .and_then(|i| fields.get(i))
        .and_then(hex)
        .ok_or_else(unreadable)?;
    Ok(Whereabouts::Stopped { sp, pc })
}

/// A range of addresses, `[start, end)`.
type Range = (u64, u64);

/// The address ranges mapped from `path`, and every mapping of the process.
fn mappings(path: &Path) -> Option<(Vec<Range>, Vec<Range>)> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = path.to_str()?;
    let mut image = Vec::new();
    let mut all = Vec::new();
    for line in maps.lines() {
        let Some((range, rest)) = line.split_once(' ') else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        all.push((start, end));
        let mapped = rest.split_once('/').map(|(_, p)| format!("/{p}"));
        if mapped
            .as_deref()
            .is_some_and(|m| m == path || m.strip_suffix(" (deleted)") == Some(path))
        {
            image.push((start, end));
        }
    }
    Some((image, all))
}

/// How long to wait, in all, for the threads that run on a CPU to be preempted or to block so
/// that their stacks can be read; one still running after that is assumed to be inside the
/// image.
const RUNNING_PATIENCE: std::time::Duration = std::time::Duration::from_millis(5);

/// Why a thread of this process may still return into the image mapped from `path`, if one
/// may: a thread started after `census` whose stack (from its saved stack pointer up) or
/// program counter holds an address inside the image, or which runs on a CPU so that where
/// it is cannot be read. A conservative scan: a stale word that happens to look like such an
/// address keeps the image mapped a while longer, never the other way round. `None` also
/// when the image is not mapped (nothing to protect).
pub(crate) fn thread_in_image(path: &Path, census: &ThreadCensus) -> Option<String> {
    let Some((image, all)) = mappings(path) else {
        return Some("cannot read /proc/self/maps to check the process's threads".into());
    };
    if image.is_empty() {
        return None;
    }
    let inside = |address: u64| image.iter().any(|&(s, e)| (s..e).contains(&address));
    let runtime = runtime_threads().clone();
    let started_since = |tid: u32| {
        let older = census.tids.binary_search(&tid).is_ok()
            && thread_start(tid)
                .is_some_and(|start| start < census.taken_at || census.taker == Some((tid, start)));
        !older && !runtime.contains(&tid)
    };
    let Ok(mem) = std::fs::File::open("/proc/self/mem") else {
        return Some("cannot open /proc/self/mem to check the process's threads".into());
    };
    let scan = |tid: u32, sp: u64| -> Option<String> {
        let stack = all.iter().find(|&&(s, e)| (s..e).contains(&sp));
        match stack.map(|&(_, end)| scan_words(&mem, sp, end, inside)) {
            Some(Ok(None)) => None,
            Some(Ok(Some(address))) => Some(format!(
                "thread {tid} ({}) holds address {address:#x} inside it on its stack",
                thread_name(tid)
            )),
            _ => Some(format!(
                "the stack of thread {tid} ({}) cannot be read",
                thread_name(tid)
            )),
        }
    };

    // The calling thread too, when module code started it (a module's thread that calls back
    // into the host, which reloads): its own stack, from here up.
    let me = current_tid();
    if let Some(me) = me.filter(|&me| started_since(me)) {
        let here = 0u8;
        if let Some(reason) = scan(me, std::ptr::addr_of!(here) as u64) {
            return Some(reason);
        }
    }

    // A thread on a CPU cannot be read; one that is preempted or blocked can. Threads are
    // looked at in turn until each has been read once or the patience runs out. The list is
    // read again at the end: a thread inside the image may have started another and exited
    // before it was looked at.
    let deadline = std::time::Instant::now() + RUNNING_PATIENCE;
    let mut seen: Vec<u32> = me.into_iter().collect();
    loop {
        let tids = match thread_ids() {
            Ok(tids) => tids,
            Err(err) => return Some(format!("cannot list the process's threads: {err}")),
        };
        let mut candidates: Vec<u32> = tids.into_iter().filter(|tid| !seen.contains(tid)).collect();
        if candidates.is_empty() {
            return None;
        }
        seen.extend(&candidates);
        candidates.retain(|&tid| started_since(tid));
        while !candidates.is_empty() {
            let mut running = Vec::new();
            for tid in candidates {
                match whereabouts(tid) {
                    Ok(Whereabouts::Exited) => {}
                    Ok(Whereabouts::Running) => running.push(tid),
                    Ok(Whereabouts::Stopped { pc, .. }) if inside(pc) => {
                        return Some(format!(
                            "thread {tid} ({}) is executing its code (at {pc:#x})",
                            thread_name(tid)
                        ));
                    }
                    Ok(Whereabouts::Stopped { sp, .. }) => {
                        if let Some(reason) = scan(tid, sp) {
                            return Some(reason);
                        }
                    }
                    Err(err) => {
                        return Some(format!(
                            "where thread {tid} ({}) is cannot be read: {err}",
                            thread_name(tid)
                        ));
                    }
                }
            }
            if !running.is_empty() && std::time::Instant::now() >= deadline {
                let tid = running[0];
                return Some(format!(
                    "thread {tid} ({}), started while it served, runs on a CPU and where it \
                     runs cannot be read",
                    thread_name(tid)
                ));
            }
            candidates = running;
            if !candidates.is_empty() {
                std::thread::yield_now();
            }
        }
    }
}

/// The first 8-byte word in `[from, to)` of this process's memory that `inside` accepts.
///
/// Read through `/proc/self/mem`, a copy the kernel makes: the thread may run meanwhile, and a
/// word it changes is only ever a stale value, never undefined behaviour.
fn scan_words(
    mem: &std::fs::File,
    from: u64,
    to: u64,
    inside: impl Fn(u64) -> bool,
) -> std::io::Result<Option<u64>> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 64 * 1024;
    let mut buffer = vec![0u8; CHUNK];
    let mut at = from & !7;
    while at < to {
        let len = CHUNK.min((to - at) as usize);
        let read = mem.read_at(&mut buffer[..len], at)?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        for word in buffer[..read].chunks_exact(8) {
            let value = u64::from_ne_bytes(word.try_into().unwrap_or([0; 8]));
            if inside(value) {
                return Ok(Some(value));
            }
        }
        at += read as u64;
    }
    Ok(None)
}
