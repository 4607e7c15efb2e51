use abi_stable::StableAbi;
use abi_stable::std_types::RString;
use hotreload::Rehome;

#[repr(C)]
#[derive(StableAbi)]
pub struct Report {
    pub title: RString,
}

// Keeps the module's vtable in `title`: dropping it after a reload would call unmapped code.
impl Rehome for Report {
    fn rehome(self) -> Self {
        self
    }
}

fn main() {}
