//! Moving values returned by a module into memory the host's code owns.
//!
//! abi_stable's owning types (`RString`, `RVec`, `RBox`, ...) carry a vtable that points into
//! the library that made them: dropping one calls that library's code. A value a module
//! returns may outlive the module's version, which a reload unmaps, so the runtime rebuilds
//! every returned value with the host's own vtables while the version is still held.

use abi_stable::std_types::{
    RBox, RHashMap, ROption, RResult, RStr, RString, RVec, Tuple2, Tuple3, Tuple4,
};

/// A value that can be rebuilt so that nothing in it points into the library that made it.
///
/// Implemented for primitives and abi_stable's types; derive it with
/// `#[derive(hotreload::Rehome)]` for your own `#[derive(StableAbi)]` types that a hot method
/// returns.
pub trait Rehome: Sized {
    /// Returns an equal value owned through the calling binary's code.
    fn rehome(self) -> Self;
}

macro_rules! rehome_plain {
    ($($t:ty),* $(,)?) => {
        $(impl Rehome for $t {
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
    RStr<'static>,
);

impl Rehome for RString {
    fn rehome(self) -> Self {
        RString::from(self.as_str())
    }
}

impl<T: Rehome> Rehome for RVec<T> {
    fn rehome(self) -> Self {
        self.into_iter().map(Rehome::rehome).collect()
    }
}

impl<T: Rehome> Rehome for RBox<T> {
    fn rehome(self) -> Self {
        RBox::new(RBox::into_inner(self).rehome())
    }
}

impl<T: Rehome> Rehome for ROption<T> {
    fn rehome(self) -> Self {
        self.map(Rehome::rehome)
    }
}

impl<T: Rehome, E: Rehome> Rehome for RResult<T, E> {
    fn rehome(self) -> Self {
        match self {
            RResult::ROk(v) => RResult::ROk(v.rehome()),
            RResult::RErr(e) => RResult::RErr(e.rehome()),
        }
    }
}

impl<K, V> Rehome for RHashMap<K, V>
where
    K: Rehome + Eq + std::hash::Hash,
    V: Rehome,
{
    fn rehome(self) -> Self {
        self.into_iter()
            .map(|tuple| {
                let abi_stable::std_types::Tuple2(k, v) = tuple;
                (k.rehome(), v.rehome())
            })
            .collect()
    }
}

impl<T: Rehome, const N: usize> Rehome for [T; N] {
    fn rehome(self) -> Self {
        self.map(Rehome::rehome)
    }
}

impl<A: Rehome, B: Rehome> Rehome for Tuple2<A, B> {
    fn rehome(self) -> Self {
        Tuple2(self.0.rehome(), self.1.rehome())
    }
}

impl<A: Rehome, B: Rehome, C: Rehome> Rehome for Tuple3<A, B, C> {
    fn rehome(self) -> Self {
        Tuple3(self.0.rehome(), self.1.rehome(), self.2.rehome())
    }
}

impl<A: Rehome, B: Rehome, C: Rehome, D: Rehome> Rehome for Tuple4<A, B, C, D> {
    fn rehome(self) -> Self {
        Tuple4(
            self.0.rehome(),
            self.1.rehome(),
            self.2.rehome(),
            self.3.rehome(),
        )
    }
}
