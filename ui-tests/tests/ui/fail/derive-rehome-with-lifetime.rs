use abi_stable::StableAbi;
use abi_stable::std_types::RStr;
use hotreload::Rehome;

#[repr(C)]
#[derive(StableAbi, Rehome)]
pub struct Label<'a> {
    pub text: RStr<'a>,
}

fn main() {}
