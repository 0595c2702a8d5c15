//! Handle table: every object handed to C is a tagged, generation-checked index into one table,
//! never a raw pointer. A freed handle (generation mismatch), a foreign pointer (no magic nibble,
//! index out of range) or a handle of another type (tag mismatch) is `BTB_ERROR_INVALID_HANDLE` —
//! including a double free — and btb never dereferences what C passes in.
//!
//! Layout of a handle value (64-bit): `0xB` magic (4 bits) | type tag (4) | generation (24) |
//! index (32). Real user-space pointers never carry the magic nibble. A slot whose 2^24
//! generations are used up is retired rather than wrapped, so no freed handle ever comes back.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use btb_core::{Error, ErrorKind, Result};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("btb's handle encoding needs 64-bit pointers");

const MAGIC: u64 = 0xB;
const GEN_MASK: u32 = 0x00FF_FFFF;

/// A live object behind a handle. Each variant holds a cheap-to-clone reference.
pub(crate) enum Object {
    Builder(crate::builder::BuilderRef),
    Trigger(crate::trigger::TriggerRef),
    Condition(u32),
    Options(crate::system::OptionsRef),
    Manifest(crate::system::ManifestRef),
    System(crate::system::SystemRef),
    Registration(crate::registration::RegistrationRef),
    TaskGroup(crate::registration::GroupRef),
    RegistrationList(crate::registration::RegistrationListRef),
    TaskGroupList(crate::registration::GroupListRef),
    Instance(crate::instance::InstanceRef),
    Deferral(crate::instance::DeferralRef),
    RunList(crate::registration::RunListRef),
    RetryPolicy(crate::retry::RetryPolicyRef),
}

impl Object {
    fn type_name(&self) -> &'static str {
        match self {
            Object::Builder(_) => "btb_builder",
            Object::Trigger(_) => "btb_trigger",
            Object::Condition(_) => "btb_condition",
            Object::Options(_) => "btb_system_options",
            Object::Manifest(_) => "btb_manifest",
            Object::System(_) => "btb_system",
            Object::Registration(_) => "btb_registration",
            Object::TaskGroup(_) => "btb_task_group",
            Object::RegistrationList(_) => "btb_registration_list",
            Object::TaskGroupList(_) => "btb_task_group_list",
            Object::Instance(_) => "btb_instance",
            Object::Deferral(_) => "btb_deferral",
            Object::RunList(_) => "btb_run_list",
            Object::RetryPolicy(_) => "btb_retry_policy",
        }
    }
}

/// An opaque C type backed by one `Object` variant.
pub(crate) trait Handle {
    const NAME: &'static str;
    /// How error messages name an argument of this type (`"builder is NULL"`).
    const ARG: &'static str;
    const TAG: u64;
    type Inner: Clone;
    fn wrap(inner: Self::Inner) -> Object;
    fn unwrap(object: &Object) -> Option<&Self::Inner>;
}

macro_rules! handle_type {
    ($c:ident, $arg:literal, $tag:literal, $variant:ident, $inner:ty) => {
        impl $crate::handle::Handle for $c {
            const NAME: &'static str = stringify!($c);
            const ARG: &'static str = $arg;
            const TAG: u64 = $tag;
            type Inner = $inner;
            fn wrap(inner: $inner) -> $crate::handle::Object {
                $crate::handle::Object::$variant(inner)
            }
            fn unwrap(object: &$crate::handle::Object) -> Option<&$inner> {
                match object {
                    $crate::handle::Object::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use handle_type;

struct Slot {
    generation: u32,
    object: Option<Object>,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    slots: Vec::new(),
    free: Vec::new(),
});

fn table() -> std::sync::MutexGuard<'static, Table> {
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

impl Table {
    /// Puts `object` in a free slot (or a new one); returns `(index, generation)`.
    fn put(&mut self, object: Object) -> (u32, u32) {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    object: None,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slot = &mut self.slots[index as usize];
        slot.object = Some(object);
        (index, slot.generation)
    }

    /// Empties a checked slot. A slot whose generation is used up is retired, never reused: a
    /// generation that wrapped around would bring a freed handle back to life.
    fn take(&mut self, index: usize) -> Option<Object> {
        let slot = &mut self.slots[index];
        let object = slot.object.take();
        if slot.generation < GEN_MASK {
            slot.generation += 1;
            self.free.push(index as u32);
        }
        object
    }
}

/// Registers an object and returns its handle.
pub(crate) fn insert<H: Handle>(inner: H::Inner) -> *mut H {
    let (index, generation) = table().put(H::wrap(inner));
    let value = (MAGIC << 60) | (H::TAG << 56) | (u64::from(generation) << 32) | u64::from(index);
    value as usize as *mut H
}

fn invalid<H: Handle>(value: u64, why: &str) -> Error {
    Error::new(
        ErrorKind::InvalidHandle,
        format!("{:#x} is not a live {} handle: {why}", value, H::NAME),
    )
}

fn decode<H: Handle>(ptr: *const H, what: &str) -> Result<(u64, usize, u32)> {
    if ptr.is_null() {
        return Err(Error::new(
            ErrorKind::NullArgument,
            format!("{what} is NULL"),
        ));
    }
    let value = ptr as usize as u64;
    if value >> 60 != MAGIC {
        return Err(invalid::<H>(value, "it was not made by btb"));
    }
    Ok((
        value,
        (value & 0xFFFF_FFFF) as usize,
        ((value >> 32) as u32) & GEN_MASK,
    ))
}

fn check<H: Handle>(t: &Table, value: u64, index: usize, generation: u32) -> Result<&Object> {
    let slot = t
        .slots
        .get(index)
        .ok_or_else(|| invalid::<H>(value, "it was not made by btb"))?;
    match &slot.object {
        Some(object) if slot.generation == generation => {
            if (value >> 56) & 0xF != H::TAG || H::unwrap(object).is_none() {
                return Err(invalid::<H>(
                    value,
                    &format!("it is a {}", object.type_name()),
                ));
            }
            Ok(object)
        }
        _ => Err(invalid::<H>(value, "it was freed")),
    }
}

/// The object behind a handle (a clone of its reference; the table lock is released on return).
/// `what` names the argument in the NULL message.
pub(crate) fn get<H: Handle>(ptr: *const H, what: &str) -> Result<H::Inner> {
    let (value, index, generation) = decode(ptr, what)?;
    let t = table();
    let object = check::<H>(&t, value, index, generation)?;
    Ok(H::unwrap(object).expect("checked").clone())
}

/// Frees a handle. NULL is a no-op; a freed or foreign handle is `INVALID_HANDLE`. The object is
/// dropped after the table lock is released.
pub(crate) fn free<H: Handle>(ptr: *mut H) -> Result<Option<H::Inner>> {
    if ptr.is_null() {
        return Ok(None);
    }
    let (value, index, generation) = decode(ptr as *const H, "handle")?;
    let object = {
        let mut t = table();
        check::<H>(&t, value, index, generation)?;
        t.take(index)
    };
    Ok(object.and_then(|o| H::unwrap(&o).cloned()))
}

/// An out-parameter C passed to btb, checked non-NULL: storage for one `T`, written at most once
/// (`write` takes `self`). The storage may be uninitialised; what it held is never read or dropped.
pub(crate) struct Out<'a, T>(&'a mut MaybeUninit<T>);

impl<'a, T> Out<'a, T> {
    /// Wraps the out-pointer `ptr` of an entry point (`None` for NULL). Call it once, at the top of
    /// the entry point, then check it with [`required`] before any work, so that no result is lost
    /// to a NULL `out`.
    ///
    /// # Safety
    ///
    /// `ptr` is NULL or points to storage, aligned and writable for a `T`, that nothing else uses
    /// during `'a` — the C contract on every out-parameter of btb ("results go through
    /// out-parameters"). `'a` must not outlive the call.
    pub(crate) unsafe fn from_raw(ptr: *mut T) -> Option<Self> {
        // SAFETY: the caller's promise above; `as_mut` handles NULL. Viewing the storage as
        // `MaybeUninit<T>` asks nothing of its contents.
        unsafe { ptr.cast::<MaybeUninit<T>>().as_mut() }.map(Out)
    }

    /// Writes the result (without reading or dropping what the storage held).
    pub(crate) fn write(self, value: T) {
        self.0.write(value);
    }
}

/// A required pointer argument: NULL (`None`) is `BTB_ERROR_NULL_ARGUMENT` naming `what`.
pub(crate) fn required<T>(arg: Option<T>, what: &str) -> Result<T> {
    arg.ok_or_else(|| Error::new(ErrorKind::NullArgument, format!("{what} is NULL")))
}

/// A C array of `capacity` elements that btb fills, checked non-NULL unless `capacity` is 0.
pub(crate) struct OutArray<'a, T> {
    ptr: *mut T,
    capacity: usize,
    _slots: PhantomData<&'a mut [T]>,
}

impl<'a, T: Copy> OutArray<'a, T> {
    /// Wraps the array argument `ptr` of an entry point: `None` when `ptr` is NULL and `capacity`
    /// is not 0 (with `capacity` 0, `ptr` may be NULL and is never used).
    ///
    /// # Safety
    ///
    /// When `capacity` is not 0, `ptr` is NULL or points to `capacity` aligned, writable elements
    /// that nothing else uses during `'a` — the C contract of btb's `capacity`-sized arrays. `'a`
    /// must not outlive the call.
    pub(crate) unsafe fn from_raw(ptr: *mut T, capacity: usize) -> Option<Self> {
        (capacity == 0 || !ptr.is_null()).then_some(OutArray {
            ptr,
            capacity,
            _slots: PhantomData,
        })
    }

    /// Writes the first `capacity` of `values` (fewer if there are fewer); the rest is untouched.
    pub(crate) fn fill(self, values: &[T]) {
        for (i, v) in values.iter().take(self.capacity).enumerate() {
            // SAFETY: `i < capacity`, so `ptr` is non-NULL and `ptr + i` is writable (`from_raw`).
            unsafe { self.ptr.add(i).write(*v) };
        }
    }
}

/// The body of every getter (run it inside `guard`): checks `out`, then the handle, then writes
/// `f(object)` to `*out`. A NULL handle is `BTB_ERROR_NULL_ARGUMENT` naming [`Handle::ARG`].
pub(crate) fn read<H: Handle, T>(
    handle: *const H,
    out: Option<Out<'_, T>>,
    f: impl FnOnce(&H::Inner) -> Result<T>,
) -> Result<()> {
    let out = required(out, "out")?;
    let inner = get(handle, H::ARG)?;
    out.write(f(&inner)?);
    Ok(())
}

/// A callback's `void *user_data` with its optional finalizer (`btb_free_fn`). A handler's closure
/// holds it (and so does every call of the handler in flight): the finalizer runs once, when the
/// last holder lets go — the handler was removed or replaced, or its system closed, and no call of
/// it is still going. btb never dereferences the pointer.
pub(crate) struct UserData {
    ptr: *mut c_void,
    free: std::sync::Mutex<crate::instance::btb_free_fn>,
}

// SAFETY: btb never dereferences user data; the header tells callers it is used from btb threads
// and that the finalizer may run on any thread.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

impl UserData {
    pub(crate) fn new(
        ptr: *mut c_void,
        free: crate::instance::btb_free_fn,
    ) -> std::sync::Arc<Self> {
        std::sync::Arc::new(UserData {
            ptr,
            free: std::sync::Mutex::new(free),
        })
    }

    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }

    /// The call failed: the caller keeps `user_data`, and the finalizer is not called.
    pub(crate) fn disarm(&self) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Disarms on an error (see [`UserData::disarm`]) and passes the result on.
    pub(crate) fn kept_on_error<T>(&self, result: Result<T>) -> Result<T> {
        if result.is_err() {
            self.disarm();
        }
        result
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        let free = self
            .free
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(free) = free {
            // SAFETY: the C caller handed us `free` for this pointer (documented on every function
            // taking one); it runs once, when btb is done with the pointer.
            unsafe { free(self.ptr) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(t: &Table, index: u32, generation: u32) -> bool {
        let slot = &t.slots[index as usize];
        slot.object.is_some() && slot.generation == generation
    }

    #[test]
    fn a_slot_whose_generations_are_used_up_is_retired() {
        // Regression: generations wrapped after 2^24 cycles of one slot, and the first handle
        // ever made from it was live again (a double free then freed someone else's object).
        let mut t = Table {
            slots: Vec::new(),
            free: Vec::new(),
        };
        let (first, g0) = t.put(Object::Condition(1));
        assert_eq!(g0, 0);
        t.take(first as usize);
        t.slots[first as usize].generation = GEN_MASK - 1; // as after 2^24 - 2 more cycles
        let (again, g) = t.put(Object::Condition(2));
        assert_eq!((again, g), (first, GEN_MASK - 1));
        t.take(again as usize);
        let (last, g) = t.put(Object::Condition(3));
        assert_eq!((last, g), (first, GEN_MASK));
        t.take(last as usize);
        // Every later object lands elsewhere; the first handle stays dead.
        for n in 0..4 {
            let (index, _) = t.put(Object::Condition(n));
            assert_ne!(index, first);
            assert!(!live(&t, first, g0));
        }
    }
}
