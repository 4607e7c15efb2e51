//! Moving values returned by a module into memory the host's code owns.
//!
//! abi_stable's owning types (`RString`, `RVec`, `RBox`, ...) carry a vtable that points into
//! the library that made them: dropping one calls that library's code. A value a module
//! returns may outlive the module's version, which a reload unmaps, so the runtime rebuilds
//! every returned value with the host's own vtables while the version is still held.
//!
//! Every `rehome` below is ordinary Rust called directly, so it runs as the copy compiled into
//! the binary that calls it, and the abi_stable constructors it calls (`RVec::from`,
//! `RBox::new`, `RHashMap::default`) take their vtables from that same binary. Borrowing and
//! dispatching types (`RStr`, `RSlice`, `RCow`, function pointers, `DynTrait` and other trait
//! objects, anything with a lifetime) cannot be rebuilt that way and have no implementation.

use abi_stable::std_types::{
    RBox, RHashMap, ROption, RResult, RString, RVec, Tuple2, Tuple3, Tuple4,
};

/// A value that can be rebuilt so that nothing in it points into the library that made it.
///
/// Implemented for primitives and abi_stable's owning types; derive it with
/// `#[derive(hotreload::Rehome)]` for your own `#[derive(StableAbi)]` types that a hot method
/// returns. The derive is the way to implement it: it rebuilds every field with the field's
/// own `Rehome`.
///
/// # Safety
///
/// The value `rehome` returns must own nothing allocated or dispatched through the library that
/// produced `self`: no vtable, function pointer or borrowed data pointing into that library's
/// image, and every owned buffer rebuilt through the calling binary's code. The runtime calls
/// `rehome` while that library is still loaded and may unload it as soon as `rehome` returns,
/// so anything left pointing into it dangles. Returning `self` unchanged is sound only for
/// plain data that holds no pointer at all.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be rebuilt by the host after a hot call",
    label = "does not implement `hotreload::Rehome`",
    note = "owned types (`RString`, `RVec<T>`, primitives, ...) implement it; borrowed ones (`RStr`, `RSlice`) cannot, they point into the module's library",
    note = "derive `hotreload::Rehome` on your own types"
)]
pub unsafe trait Rehome: Sized {
    /// Returns an equal value owned through the calling binary's code.
    fn rehome(self) -> Self;

    /// Whether the value is an error (`RResult::RErr`, what a method returning a `Result`
    /// returns as `Err`): counted in the version's metrics.
    #[doc(hidden)]
    #[inline(always)]
    fn is_err(&self) -> bool {
        false
    }
}

macro_rules! rehome_plain {
    ($($t:ty),* $(,)?) => {
        // SAFETY: each `$t` is plain data (`()`, `bool`, integers, floats): it holds no
        // pointer, vtable or allocation, so its bits refer to nothing in any library.
        $(unsafe impl Rehome for $t {
            #[inline(always)]
            fn rehome(self) -> Self {
                self
            }
        })*
    };
}

rehome_plain!(
    (),
    bool,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
);

// SAFETY: the result is a fresh `String` allocation converted into an `RString` (whose `RVec<u8>`
// vtable is the caller's); it copies the bytes and keeps no pointer into `self`, which is dropped
// here through its own vtable.
unsafe impl Rehome for RString {
    fn rehome(self) -> Self {
        RString::from(self.as_str())
    }
}

// SAFETY: `collect` builds a new `Vec` and converts it with `RVec::from`, which takes the
// caller's vtable; every element is rebuilt by `T`'s `Rehome`. The old buffer is freed through
// its own vtable when the iterator drops.
unsafe impl<T: Rehome> Rehome for RVec<T> {
    fn rehome(self) -> Self {
        self.into_iter().map(Rehome::rehome).collect()
    }
}

// SAFETY: `RBox::new` allocates with the caller's vtable; the content is rebuilt by `T`'s
// `Rehome`, and `into_inner` frees the old allocation through its own vtable.
unsafe impl<T: Rehome> Rehome for RBox<T> {
    fn rehome(self) -> Self {
        RBox::new(RBox::into_inner(self).rehome())
    }
}

// SAFETY: `ROption` is a `#[repr(C)]` enum with no vtable or allocation of its own; its payload
// is rebuilt by `T`'s `Rehome`.
unsafe impl<T: Rehome> Rehome for ROption<T> {
    fn rehome(self) -> Self {
        self.map(Rehome::rehome)
    }
}

// SAFETY: `RResult` is a `#[repr(C)]` enum with no vtable or allocation of its own; its payload
// is rebuilt by `T`'s or `E`'s `Rehome`.
unsafe impl<T: Rehome, E: Rehome> Rehome for RResult<T, E> {
    fn rehome(self) -> Self {
        match self {
            RResult::ROk(v) => RResult::ROk(v.rehome()),
            RResult::RErr(e) => RResult::RErr(e.rehome()),
        }
    }

    #[inline(always)]
    fn is_err(&self) -> bool {
        matches!(self, RResult::RErr(_))
    }
}

// SAFETY: `collect` builds a new map with `RHashMap::default`, which takes the caller's vtable
// and the caller's `RandomState`; every key and value is rebuilt by its `Rehome`. The old map is
// emptied and freed through its own vtable by its iterator.
unsafe impl<K, V> Rehome for RHashMap<K, V>
where
    K: Rehome + Eq + std::hash::Hash,
    V: Rehome,
{
    fn rehome(self) -> Self {
        self.into_iter()
            .map(|Tuple2(k, v)| (k.rehome(), v.rehome()))
            .collect()
    }
}

// SAFETY: an array owns nothing beyond its elements, each rebuilt by `T`'s `Rehome`.
unsafe impl<T: Rehome, const N: usize> Rehome for [T; N] {
    fn rehome(self) -> Self {
        self.map(Rehome::rehome)
    }
}

// SAFETY: `Tuple2` is a `#[repr(C)]` struct owning nothing beyond its fields, each rebuilt by its
// `Rehome`.
unsafe impl<A: Rehome, B: Rehome> Rehome for Tuple2<A, B> {
    fn rehome(self) -> Self {
        Tuple2(self.0.rehome(), self.1.rehome())
    }
}

// SAFETY: `Tuple3` is a `#[repr(C)]` struct owning nothing beyond its fields, each rebuilt by its
// `Rehome`.
unsafe impl<A: Rehome, B: Rehome, C: Rehome> Rehome for Tuple3<A, B, C> {
    fn rehome(self) -> Self {
        Tuple3(self.0.rehome(), self.1.rehome(), self.2.rehome())
    }
}

// SAFETY: `Tuple4` is a `#[repr(C)]` struct owning nothing beyond its fields, each rebuilt by its
// `Rehome`.
unsafe impl<A: Rehome, B: Rehome, C: Rehome, D: Rehome> Rehome for Tuple4<A, B, C, D> {
    fn rehome(self) -> Self {
        Tuple4(
            self.0.rehome(),
            self.1.rehome(),
            self.2.rehome(),
            self.3.rehome(),
        )
    }
}
