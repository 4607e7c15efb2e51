//! Thread-local destructors of loaded libraries, kept and run by the runtime instead of the C
//! library, so that a version that used a `thread_local!` with a destructor can be unmapped.
//!
//! A thread-local whose type has a destructor (a `thread_local!` holding a `Vec`, `rand`'s
//! thread RNG, `tracing`'s dispatcher, every thread std starts) registers that destructor on
//! first use in each thread with glibc's `__cxa_thread_atexit_impl`, naming the library it
//! lives in. glibc then never unmaps that library: `dlclose` leaves a library with registered
//! destructors mapped, and nothing takes a registration back. Every version of such a module
//! would stay mapped for the life of the process (about a megabyte per reload).
//!
//! So the runtime takes the registration over when it opens a library. The library reaches
//! `__cxa_thread_atexit_impl` through slots the dynamic loader fills with its address (found
//! in the file's dynamic relocations when it is staged, [`DtorSlots::find`]); right after
//! `dlopen`, before any code of the library runs but its initialisers, those slots are
//! pointed at [`register`] here ([`take_over`]). A destructor registered through it goes on a
//! list of the registering thread, held in the host's own thread-local (the host is never
//! unloaded), and runs on that thread:
//! - when the thread ends, in reverse order of registration, as glibc would run it;
//! - when its version is closed, if the closing thread is the one that registered it;
//! - otherwise at the thread's first call through a handle after the version was closed.
//!
//! A version whose destructors are still pending on another thread stays held (mapped) until
//! that thread has run them; the next retire then closes it like any held version. A
//! destructor registered while its thread's list is itself being destroyed (at thread exit),
//! or by a library this runtime did not open, goes to glibc as before, and its library stays
//! mapped (a closed version's report says so).
//!
//! The library's `pthread_key_create` is taken over the same way ([`key_create`]): std makes
//! a key whose destructor is its own code the first time a thread asks for
//! `std::thread::current()`, and glibc would call it at that thread's exit, in an unmapped
//! image. The keys a library made are deleted just before it is closed
//! ([`ImageDtors::release_keys`]), the closing thread's value run first; an image whose slots
//! for it cannot be taken over is never unmapped.
//!
//! Written here because no maintained crate redirects one import of a loaded library; the
//! part that writes to the library's memory is a few lines, checked against what the loader
//! put there before anything is changed.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The C library's function that the slots hold, and that [`register`] replaces.
const SYMBOL: &str = "__cxa_thread_atexit_impl";
/// The other import taken over: std creates a pthread key whose destructor is in the library
/// (`thread::current()`'s clean-up at thread exit), which would call into an unmapped image.
const KEY_CREATE: &str = "pthread_key_create";

/// A thread-local destructor as glibc receives it.
type Dtor = unsafe extern "C" fn(*mut c_void);

/// Where a library file refers to `__cxa_thread_atexit_impl`, read from its dynamic
/// relocations and program headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct DtorSlots {
    /// Addresses (relative to the load address) of the slots the loader fills with the
    /// address of `__cxa_thread_atexit_impl`.
    slots: Vec<u64>,
    /// The same for `pthread_key_create`.
    key_slots: Vec<u64>,
    /// The range the loader makes read-only after relocating (`PT_GNU_RELRO`).
    relro: Option<(u64, u64)>,
    /// The ranges of the writable loaded segments.
    writable: Vec<(u64, u64)>,
    /// The lowest and highest address of the loaded segments.
    span: (u64, u64),
}

impl DtorSlots {
    /// Reads them from a parsed library.
    pub(crate) fn find(file: &object::File<'_>) -> DtorSlots {
        use object::read::elf::ProgramHeader;
        use object::{Object, ObjectSymbol, ObjectSymbolTable, RelocationTarget};
        let mut found = DtorSlots::default();
        let (Some(relocations), Some(symbols)) =
            (file.dynamic_relocations(), file.dynamic_symbol_table())
        else {
            return found;
        };
        for (offset, relocation) in relocations {
            let RelocationTarget::Symbol(index) = relocation.target() else {
                continue;
            };
            let name = symbols
                .symbol_by_index(index)
                .ok()
                .and_then(|s| s.name_bytes().ok());
            match name {
                _ if relocation.addend() != 0 => {}
                Some(name) if name == SYMBOL.as_bytes() => found.slots.push(offset),
                Some(name) if name == KEY_CREATE.as_bytes() => found.key_slots.push(offset),
                _ => {}
            }
        }
        let object::File::Elf64(elf) = file else {
            return DtorSlots::default();
        };
        let endian = elf.endian();
        let mut low = u64::MAX;
        let mut high = 0;
        for header in elf.elf_program_headers() {
            let start = header.p_vaddr(endian);
            let end = start.saturating_add(header.p_memsz(endian));
            match header.p_type(endian) {
                object::elf::PT_LOAD => {
                    low = low.min(start);
                    high = high.max(end);
                    if header.p_flags(endian) & object::elf::PF_W != 0 {
                        found.writable.push((start, end));
                    }
                }
                object::elf::PT_GNU_RELRO => found.relro = Some((start, end)),
                _ => {}
            }
        }
        found.span = (low.min(high), high);
        found
    }

    /// Whether the library refers to neither function.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.key_slots.is_empty()
    }
}

/// The thread-local destructors of one opened library, kept by the runtime.
#[derive(Debug)]
pub(crate) struct ImageDtors {
    /// Where the library is mapped: `dso` arguments inside it are its.
    start: usize,
    end: usize,
    /// Destructors registered and not yet run, on every thread's list.
    pending: AtomicUsize,
    /// Raised when the version is closed while other threads' destructors are pending: those
    /// threads run them at their next call.
    closing: AtomicBool,
    /// The pthread keys the library created with a destructor of its own, deleted when it is
    /// closed (their destructors would otherwise run in an unmapped image at thread exit).
    keys: Mutex<Vec<(libc::pthread_key_t, Dtor)>>,
    /// Why the library's pthread keys cannot be known, if they cannot: it then stays mapped.
    keys_unknown: Option<String>,
}

/// The libraries whose registrations the runtime has taken over. Looked up on each
/// registration (once per thread-local per thread), changed on each open and close.
static IMAGES: Mutex<Vec<Arc<ImageDtors>>> = Mutex::new(Vec::new());

/// Bumped each time a version is closed with destructors pending on other threads: a thread
/// that has not seen the latest value looks at its list at its next call.
static CLOSED: AtomicU32 = AtomicU32::new(0);

/// A destructor registered by a thread, for an image.
struct Entry {
    dtor: Dtor,
    object: *mut c_void,
    image: Arc<ImageDtors>,
}

impl Entry {
    fn run(self) {
        // SAFETY: `dtor` and `object` are what the library's code registered on this thread,
        // as it would have with glibc; the library is mapped (its image is closed only once
        // no destructor of it is pending), and each entry is taken off the list before it
        // runs, so it runs once.
        unsafe { (self.dtor)(self.object) };
        self.image.pending.fetch_sub(1, Ordering::Release);
    }
}

/// A thread's pending destructors: run in reverse order when the thread ends.
struct ThreadList(RefCell<Vec<Entry>>);

impl ThreadList {
    /// Takes the last entry that `pick` accepts off the list.
    fn take_last(&self, pick: impl Fn(&Entry) -> bool) -> Option<Entry> {
        let mut entries = self.0.borrow_mut();
        let index = entries.iter().rposition(pick)?;
        Some(entries.remove(index))
    }

    /// Runs, last registered first, every entry `pick` accepts, including those that the
    /// destructors register as they run. No borrow is held while a destructor runs.
    fn run_all(&self, pick: impl Fn(&Entry) -> bool) {
        while let Some(entry) = self.take_last(&pick) {
            entry.run();
        }
    }
}

impl Drop for ThreadList {
    fn drop(&mut self) {
        self.run_all(|_| true);
    }
}

std::thread_local! {
    static LIST: ThreadList = const { ThreadList(RefCell::new(Vec::new())) };
    /// The value of [`CLOSED`] this thread last acted on: `const` without a destructor, so
    /// reading it on the call path costs a load.
    static SEEN: Cell<u32> = const { Cell::new(0) };
}

/// What the library's slots point to after [`take_over`]: keeps the destructor on the
/// calling thread's list if the address is in a library the runtime opened, else hands it to
/// glibc as the library would have. Never unwinds.
unsafe extern "C" fn register(dtor: Dtor, object: *mut c_void, dso: *mut c_void) -> i32 {
    if let Some(image) = find(dso as usize) {
        image.pending.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            dtor,
            object,
            image: Arc::clone(&image),
        };
        if LIST
            .try_with(move |list| list.0.borrow_mut().push(entry))
            .is_ok()
        {
            return 0;
        }
        // The list is being destroyed: this thread is ending. glibc takes the destructor
        // (and keeps the library mapped).
        image.pending.fetch_sub(1, Ordering::Release);
    }
    match glibc_register() {
        // SAFETY: the C library's own function, with the arguments the library passed.
        Some(glibc) => unsafe { glibc(dtor, object, dso) },
        None => -1,
    }
}

/// The taken-over image that `address` lies in.
fn find(address: usize) -> Option<Arc<ImageDtors>> {
    IMAGES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .find(|image| (image.start..image.end).contains(&address))
        .cloned()
}

type Register = unsafe extern "C" fn(Dtor, *mut c_void, *mut c_void) -> i32;
type KeyCreate = unsafe extern "C" fn(*mut libc::pthread_key_t, Option<Dtor>) -> i32;

/// The address of the C library's function `name` (0 if there is none), as the process's
/// global scope resolves it: a library opened `RTLD_LOCAL` is not in it.
fn glibc_function(name: &std::ffi::CStr) -> usize {
    // SAFETY: `dlsym` with a NUL-terminated name and the `RTLD_DEFAULT` pseudo-handle.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize }
}

/// glibc's `__cxa_thread_atexit_impl`.
fn glibc_register() -> Option<Register> {
    static FOUND: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let address = *FOUND.get_or_init(|| glibc_function(c"__cxa_thread_atexit_impl"));
    // SAFETY: a non-null address of that symbol is that function, whose C signature this is.
    (address != 0).then(|| unsafe { std::mem::transmute::<usize, Register>(address) })
}

/// What the library's `pthread_key_create` slots point to after [`take_over`]: creates the
/// key with glibc, and remembers it for the library whose code the destructor is.
unsafe extern "C" fn key_create(key: *mut libc::pthread_key_t, dtor: Option<Dtor>) -> i32 {
    // SAFETY: the library's own arguments, passed on as it would have to glibc.
    let status = unsafe { libc::pthread_key_create(key, dtor) };
    if let (0, Some(dtor)) = (status, dtor) {
        if let Some(image) = find(dtor as usize) {
            // SAFETY: glibc wrote the new key through `key` (status 0).
            let created = unsafe { key.read() };
            image
                .keys
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((created, dtor));
        }
    }
    status
}

/// Points the library's slots for `__cxa_thread_atexit_impl` at [`register`] and those for
/// `pthread_key_create` at [`key_create`], right after `dlopen` (`handle`) and before any of
/// its code but its initialisers has run. `None` if the library refers to neither, or its
/// load address cannot be known. A slot that does not hold what the loader should have put
/// there is left alone: thread-local destructors then go to glibc (which keeps the library
/// mapped); pthread keys then cannot be known, and the image is never unmapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn take_over(handle: *mut c_void, found: &DtorSlots) -> Option<Arc<ImageDtors>> {
    if found.is_empty() {
        return None;
    }
    let mut map: *mut usize = std::ptr::null_mut();
    // SAFETY: `handle` is a library handle from `dlopen`, not yet closed; `RTLD_DI_LINKMAP`
    // stores a `struct link_map *` through the pointer given.
    let status = unsafe {
        libc::dlinfo(
            handle,
            libc::RTLD_DI_LINKMAP,
            (&raw mut map).cast::<c_void>(),
        )
    };
    if status != 0 || map.is_null() {
        return None;
    }
    // SAFETY: `l_addr`, the difference between the file's addresses and the loaded ones, is
    // the first field of glibc's public `struct link_map` (`<link.h>`), a pointer-sized word.
    let base = unsafe { map.read() };
    let glibc_key_create = glibc_function(c"pthread_key_create");
    let ours = key_create as KeyCreate as usize;
    let keys_unknown = (!found.key_slots.is_empty()
        && (glibc_key_create == 0
            || !redirect(found, base, &found.key_slots, glibc_key_create, ours)))
    .then(|| {
        format!("its {KEY_CREATE} could not be taken over: a pthread key it made may call into it")
    });
    let image = Arc::new(ImageDtors {
        start: base.wrapping_add(found.span.0 as usize),
        end: base.wrapping_add(found.span.1 as usize),
        pending: AtomicUsize::new(0),
        closing: AtomicBool::new(false),
        keys: Mutex::new(Vec::new()),
        keys_unknown,
    });
    // Registered before any slot points here: a registration finds its image.
    IMAGES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::clone(&image));
    if let Some(glibc) = glibc_register() {
        if !found.slots.is_empty()
            && !redirect(
                found,
                base,
                &found.slots,
                glibc as usize,
                register as Register as usize,
            )
        {
            tracing::debug!("{SYMBOL} not taken over: its destructors go to glibc");
        }
    }
    Some(image)
}

/// Points every slot of `slots` (file addresses, loaded at `base`) at `to`, if each holds
/// `expected` now and lies in a writable segment; changes nothing and says `false` otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn redirect(found: &DtorSlots, base: usize, slots: &[u64], expected: usize, to: usize) -> bool {
    use std::sync::atomic::AtomicUsize as Word;
    let inside = |slot: u64, ranges: &[(u64, u64)]| {
        ranges
            .iter()
            .any(|&(start, end)| start <= slot && slot.saturating_add(8) <= end)
    };
    let addresses: Vec<*mut usize> = slots
        .iter()
        .map(|&slot| base.wrapping_add(slot as usize) as *mut usize)
        .collect();
    for (&slot, &address) in slots.iter().zip(&addresses) {
        if !inside(slot, &found.writable) || address.align_offset(8) != 0 {
            tracing::debug!("a slot is not an aligned word of a writable segment");
            return false;
        }
        // SAFETY: the slot lies in a writable loaded segment of the library (checked just
        // above), mapped while its handle is open, and is aligned (checked just above): read
        // as an atomic word, as threads its initialisers started may read it.
        let holds = unsafe { (*address.cast::<Word>()).load(Ordering::Relaxed) };
        if holds != expected {
            tracing::debug!("a slot does not hold the C library's address");
            return false;
        }
    }
    let page = page_size();
    // The pages the loader made read-only: those wholly inside `PT_GNU_RELRO` (it rounds the
    // end down; a last partial page stays writable).
    let read_only = found.relro.map(|(start, end)| {
        let start = base.wrapping_add(start as usize) & !(page - 1);
        let end = base.wrapping_add(end as usize) & !(page - 1);
        start..end
    });
    let mut all = true;
    for &address in &addresses {
        let page_start = address as usize & !(page - 1);
        let protected = read_only
            .as_ref()
            .is_some_and(|pages| pages.contains(&page_start));
        let page_start = page_start as *mut c_void;
        if protected {
            // SAFETY: the page holding the slot is one of the library's own, made read-only
            // by the loader after relocation; it is made writable for the one store below.
            let status =
                unsafe { libc::mprotect(page_start, page, libc::PROT_READ | libc::PROT_WRITE) };
            if status != 0 {
                all = false;
                continue;
            }
        }
        // SAFETY: an aligned word of the library's data, checked above to hold the C
        // library's function, replaced by a function of the same C signature; an atomic
        // store, as threads its initialisers started may read it.
        unsafe { (*address.cast::<Word>()).store(to, Ordering::Relaxed) };
        if protected {
            // SAFETY: as above: restores the protection the loader gave the page.
            if unsafe { libc::mprotect(page_start, page, libc::PROT_READ) } != 0 {
                tracing::debug!("the page of a slot stays writable");
            }
        }
    }
    all
}

/// Elsewhere libraries register with the platform as usual.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn take_over(_handle: *mut c_void, _found: &DtorSlots) -> Option<Arc<ImageDtors>> {
    None
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

impl ImageDtors {
    /// Before the version is closed: runs this thread's pending destructors of the image and
    /// says how many other threads' are still pending. If some are, those threads run them
    /// at their next call.
    pub(crate) fn settle(&self) -> Option<String> {
        if let Some(reason) = &self.keys_unknown {
            return Some(reason.clone());
        }
        let _ = LIST.try_with(|list| list.run_all(|entry| std::ptr::eq(&*entry.image, self)));
        let pending = self.pending.load(Ordering::Acquire);
        if pending == 0 {
            return None;
        }
        if !self.closing.swap(true, Ordering::Relaxed) {
            CLOSED.fetch_add(1, Ordering::Release);
        }
        Some(format!(
            "{pending} thread-local destructor(s) of it are pending on other threads (each \
             thread runs its own at its next call through a handle, or when it ends)"
        ))
    }

    /// Just before the image is closed (no destructor pending): deletes the pthread keys it
    /// created with a destructor of its own, after running this thread's (the closing one's)
    /// on it. Another thread's value of such a key is left unrun: std's key holds no more than
    /// a marker, and its clean-up (the thread's handle in the module's std) is leaked.
    pub(crate) fn release_keys(&self) {
        let keys = std::mem::take(&mut *self.keys.lock().unwrap_or_else(PoisonError::into_inner));
        for (key, dtor) in keys.into_iter().rev() {
            // SAFETY: a key glibc created for the library and not deleted yet; its destructor
            // is the library's, mapped until this returns, run on this thread with this
            // thread's value, as glibc would at thread exit, and only once (the value is
            // cleared first). `pthread_key_delete` runs no destructor.
            unsafe {
                let value = libc::pthread_getspecific(key);
                if !value.is_null() {
                    libc::pthread_setspecific(key, std::ptr::null());
                    dtor(value);
                }
                libc::pthread_key_delete(key);
            }
        }
    }

    /// When the image is closed (no destructor pending): registrations stop coming here.
    pub(crate) fn forget(self: &Arc<Self>) {
        IMAGES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|image| !Arc::ptr_eq(image, self));
    }
}

/// On the call path: if a version was closed since this thread last looked, runs this
/// thread's pending destructors of closing versions. A relaxed load and a compare otherwise.
#[inline(always)]
pub(crate) fn catch_up() {
    let closed = CLOSED.load(Ordering::Relaxed);
    if SEEN.with(Cell::get) != closed {
        run_closing();
    }
}

#[cold]
#[inline(never)]
fn run_closing() {
    let closed = CLOSED.load(Ordering::Acquire);
    SEEN.with(|seen| seen.set(closed));
    let _ = LIST.try_with(|list| list.run_all(|entry| entry.image.closing.load(Ordering::Relaxed)));
}
