// SPDX-License-Identifier: GPL-2.0

//! KUnit glue: Rust test functions form a KUnit suite (6.12 has no `#[kunit_tests]`).
//!
//! ```ignore
//! fn parses_numbers(t: &mut Test) { kcheck!(t, parse_u32("7") == Ok(7)); }
//! kunit_suite!(DMCORE_SUITE, "dmcore", "dmcore_kunit", [parses_numbers]);
//! ```
//!
//! The suite lands in the module's `.kunit_test_suites` section, so KUnit runs it when the
//! module is loaded and prints KTAP to the kernel log and to
//! `/sys/kernel/debug/kunit/<suite>/results`.

use super::bindings;
use super::bio::Bio;
use super::status::StatusWriter;
use core::fmt;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use kernel::alloc::flags::GFP_KERNEL;
use kernel::error::{code::*, Result};
use kernel::page::{Page, PAGE_SIZE};

/// The running test case.
///
/// # Invariants
///
/// `t` is the `struct kunit` of the case running in the current thread.
pub struct Test {
    t: NonNull<bindings::kunit>,
}

impl Test {
    /// # Safety
    ///
    /// `t` must be the `struct kunit` KUnit passed to the running case.
    pub unsafe fn from_raw(t: *mut bindings::kunit) -> Self {
        // INVARIANT: guaranteed by the caller; KUnit never passes null.
        // SAFETY: as above.
        Self { t: unsafe { NonNull::new_unchecked(t) } }
    }

    /// Records a failure (the case goes on, and is reported `not ok`). `file` and `msg` must
    /// end with a NUL (the check macros ensure it).
    pub fn fail(&self, file: &'static str, line: u32, msg: &'static str) {
        let ok = |s: &str| s.as_bytes().last() == Some(&0);
        let file = if ok(file) { file } else { "?\0" };
        let msg = if ok(msg) { msg } else { "check failed\0" };
        // SAFETY: `t` is the running case (type invariant); both strings are NUL-terminated.
        unsafe { bindings::dmcore_kunit_fail(self.t.as_ptr(), file.as_ptr(), line as i32, msg.as_ptr()) };
    }

    /// Records a failure with a formatted message (truncated to 255 bytes).
    pub fn fail_fmt(&self, file: &'static str, line: u32, args: fmt::Arguments<'_>) {
        let mut buf = [0u8; 256];
        let mut w = StatusWriter::new(&mut buf);
        let _ = fmt::write(&mut w, args);
        let n = w.len();
        let file = if file.as_bytes().last() == Some(&0) { file } else { "?\0" };
        // SAFETY: `t` is the running case; `buf` is NUL-terminated at `n` by the writer.
        unsafe { bindings::dmcore_kunit_fail(self.t.as_ptr(), file.as_ptr(), line as i32, buf[..=n].as_ptr()) };
    }
}

/// Fails the running case if `cond` is false (and goes on).
macro_rules! kcheck {
    ($t:expr, $cond:expr) => {{
        if !($cond) {
            $t.fail(concat!(file!(), "\0"), line!(), concat!(stringify!($cond), "\0"));
        }
    }};
}
pub(crate) use kcheck;

/// Fails the running case if `a != b`, printing both.
macro_rules! kcheck_eq {
    ($t:expr, $a:expr, $b:expr) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            $t.fail_fmt(
                concat!(file!(), "\0"),
                line!(),
                format_args!("{} == {}: {:?} != {:?}", stringify!($a), stringify!($b), a, b),
            );
        }
    }};
}
pub(crate) use kcheck_eq;

/// Copies a suite name into KUnit's fixed `char[256]`, at compile time.
pub const fn suite_name(s: &str) -> [bindings::ffi::c_char; 256] {
    let b = s.as_bytes();
    assert!(b.len() < 256, "KUnit suite name too long");
    let mut out = [0 as bindings::ffi::c_char; 256];
    let mut i = 0;
    while i < b.len() {
        out[i] = b[i] as bindings::ffi::c_char;
        i += 1;
    }
    out
}

/// Declares a KUnit suite `$name` (module `$module`) of Rust cases `fn(&mut Test)`.
macro_rules! kunit_suite {
    ($id:ident, $name:literal, $module:literal, [$($case:ident),* $(,)?]) => {
        // The generated glue is dmcore's own unsafe code, expanded in the test crate.
        #[allow(non_snake_case, unsafe_code)]
        mod $id {
            use $crate::dmcore::bindings;
            $(
                #[allow(non_snake_case)]
                unsafe extern "C" fn $case(t: *mut bindings::kunit) {
                    // SAFETY: KUnit passes the running case's `struct kunit`.
                    let mut t = unsafe { $crate::dmcore::kunit::Test::from_raw(t) };
                    super::$case(&mut t);
                }
            )*
            const N: usize = [$(stringify!($case)),*].len();
            // SAFETY: an all-zero `kunit_case` is KUnit's end-of-array marker and a valid
            // starting state for every field KUnit fills in.
            const ZERO_CASE: bindings::kunit_case = unsafe { core::mem::zeroed() };
            // KUnit writes each case's status and log into this array, hence `static mut`
            // (only KUnit touches it, from its test thread).
            static mut CASES: [bindings::kunit_case; N + 1] = [
                $(bindings::kunit_case {
                    run_case: Some($case),
                    name: concat!(stringify!($case), "\0").as_ptr(),
                    module_name: concat!($module, "\0").as_ptr() as *mut _,
                    ..ZERO_CASE
                },)*
                ZERO_CASE,
            ];
            static mut SUITE: bindings::kunit_suite = bindings::kunit_suite {
                name: $crate::dmcore::kunit::suite_name($name),
                test_cases: core::ptr::addr_of_mut!(CASES).cast(),
                // SAFETY: all-zero is the C initialiser's value for the remaining fields.
                ..unsafe { core::mem::zeroed() }
            };
            // The module loader collects this section and KUnit runs the suite at load time.
            #[used]
            #[link_section = ".kunit_test_suites"]
            static mut ENTRY: *mut bindings::kunit_suite = core::ptr::addr_of_mut!(SUITE);
        }
    };
}
pub(crate) use kunit_suite;

/// Operation flags for [`TestBio`].
#[derive(Clone, Copy, Default)]
pub struct TestOp {
    /// A write (else a read).
    pub write: bool,
    /// `REQ_FUA`.
    pub fua: bool,
    /// `REQ_PREFLUSH`.
    pub preflush: bool,
}

const TEST_BIO_PAGES: usize = 4;

/// A real bio for tests: `bio_kmalloc` with pages from `alloc_page`, recording its completions.
///
/// # Invariants
///
/// `bio` was `bio_kmalloc`ed and `bio_init`ed with the pages in `pages`, all owned here;
/// `bi_private` points to `done`, which is boxed so it does not move.
pub struct TestBio {
    bio: NonNull<bindings::bio>,
    pages: kernel::alloc::KVec<Page>,
    done: kernel::alloc::KBox<Completions>,
    taken: bool,
}

/// Completion record of a [`TestBio`].
#[derive(Default)]
pub struct Completions {
    /// How many times the bio was completed.
    pub count: AtomicU32,
    /// Last completion status.
    pub status: AtomicU32,
}

unsafe extern "C" fn test_bio_end_io(bio: *mut bindings::bio) {
    // SAFETY: `bi_private` is the `Completions` of the owning `TestBio` (type invariant), alive
    // until the `TestBio` is dropped, which waits for no one: tests complete bios synchronously.
    unsafe {
        let c = &*((*bio).bi_private as *const Completions);
        c.status.store(u32::from((*bio).bi_status), Ordering::SeqCst);
        c.count.fetch_add(1, Ordering::SeqCst);
    }
}

impl TestBio {
    /// Builds a bio at `sector` whose data are the `(offset, len)` ranges of successive fresh
    /// pages; page `i` byte `j` holds `fill(i, j)`.
    pub fn new(op: TestOp, sector: u64, ranges: &[(u32, u32)], fill: impl Fn(usize, usize) -> u8) -> Result<Self> {
        if ranges.len() > TEST_BIO_PAGES {
            return Err(EINVAL);
        }
        let done = kernel::alloc::KBox::new(Completions::default(), GFP_KERNEL)?;
        let mut opf = if op.write { bindings::req_op_REQ_OP_WRITE } else { bindings::req_op_REQ_OP_READ };
        if op.fua {
            opf |= bindings::DMCORE_REQ_FUA;
        }
        if op.preflush {
            opf |= bindings::DMCORE_REQ_PREFLUSH;
        }
        // SAFETY: plain allocation; checked for null below.
        let bio = unsafe { bindings::bio_kmalloc(TEST_BIO_PAGES as u16, bindings::DMCORE_GFP_KERNEL) };
        let bio = NonNull::new(bio).ok_or(ENOMEM)?;
        // SAFETY: `bio` was just allocated with room for `TEST_BIO_PAGES` inline vecs.
        unsafe {
            bindings::bio_init(bio.as_ptr(), core::ptr::null_mut(), (*bio.as_ptr()).bi_inline_vecs.as_mut_ptr(), TEST_BIO_PAGES as u16, opf);
            (*bio.as_ptr()).bi_iter.bi_sector = sector;
            (*bio.as_ptr()).bi_end_io = Some(test_bio_end_io);
            (*bio.as_ptr()).bi_private = (&*done as *const Completions) as *mut _;
        }
        // INVARIANT: pages are added below; on failure `Drop` frees what was set up.
        let pages = kernel::alloc::KVec::with_capacity(ranges.len(), GFP_KERNEL)?;
        let mut me = Self { bio, pages, done, taken: false };
        for (i, &(off, len)) in ranges.iter().enumerate() {
            let page = Page::alloc_page(GFP_KERNEL)?;
            let mut chunk = [0u8; 256];
            for base in (0..PAGE_SIZE).step_by(chunk.len()) {
                for (j, b) in chunk.iter_mut().enumerate() {
                    *b = fill(i, base + j);
                }
                // SAFETY: `chunk` is a valid buffer; the range is inside the new page, which
                // nobody else uses yet.
                unsafe { page.write_raw(chunk.as_ptr(), base, chunk.len())? };
            }
            // SAFETY: live bio with free inline vecs; the page outlives the bio (both dropped
            // together, bio first).
            if unsafe { bindings::bio_add_page(bio.as_ptr(), page.as_ptr(), len, off) } != len as i32 {
                return Err(EINVAL);
            }
            me.pages.push(page, GFP_KERNEL)?;
        }
        Ok(me)
    }

    /// Advances the bio's position by `bytes` (`bio_advance`).
    pub fn advance(&mut self, bytes: u32) {
        // SAFETY: live bio not handed out (`&mut self`).
        unsafe { bindings::dmcore_bio_advance(self.bio.as_ptr(), bytes) };
    }

    /// Hands out the completion responsibility as a [`Bio`] (once).
    pub fn take(&mut self) -> Option<Bio<()>> {
        if self.taken {
            return None;
        }
        self.taken = true;
        // SAFETY: live bio; `()` needs no per-bio data; completion goes to `test_bio_end_io`.
        unsafe { Bio::<()>::from_dm_map(self.bio.as_ptr(), 0) }
    }

    /// The completion record.
    pub fn completions(&self) -> &Completions {
        &self.done
    }

    /// Byte `j` of page `i`.
    pub fn page_byte(&self, i: usize, j: usize) -> u8 {
        let mut v = 0u8;
        if let Some(p) = self.pages.get(i) {
            // SAFETY: `v` is a valid one-byte buffer; `read_raw` bounds-checks `j`.
            let _ = unsafe { p.read_raw(&mut v, j, 1) };
        }
        v
    }
}

impl Drop for TestBio {
    fn drop(&mut self) {
        // SAFETY: the bio is no longer in use (tests complete it synchronously before dropping);
        // `bio_kmalloc` bios are freed with `bio_uninit` + `kfree`. The pages go after it.
        unsafe {
            bindings::bio_uninit(self.bio.as_ptr());
            bindings::kfree(self.bio.as_ptr().cast());
        }
    }
}
