//! Platform-specific pieces behind a portable API: opening a library, and asking whether an
//! image is still mapped. Linux (glibc) is where this is built and tested.

#[cfg(unix)]
mod thread_exit;
#[cfg(unix)]
pub(crate) use thread_exit::{DtorSlots, ImageDtors};
// The call path of loaded modules only (not built with the `static` feature).
#[cfg(all(unix, not(feature = "static")))]
pub(crate) use thread_exit::catch_up;
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub(crate) use unix::{
    RuntimeThread, ThreadCensus, is_mapped, open_library, same_file, thread_census,
    thread_in_image, try_lock_exclusive,
};

#[cfg(not(unix))]
mod other;
#[cfg(all(not(unix), not(feature = "static")))]
pub(crate) use other::catch_up;
#[cfg(not(unix))]
pub(crate) use other::{DtorSlots, ImageDtors};
#[cfg(not(unix))]
pub(crate) use other::{
    RuntimeThread, ThreadCensus, is_mapped, open_library, same_file, thread_census,
    thread_in_image, try_lock_exclusive,
};

mod permissions;
pub(crate) use permissions::copy_trusted;
#[cfg(unix)]
pub(crate) use permissions::{effective_uid, unsafe_directory};
