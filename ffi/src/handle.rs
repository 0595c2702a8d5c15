//! Handle table: every object handed to C is a tagged, generation-checked index into one table,
//! never a raw pointer. A freed handle (generation mismatch), a foreign pointer (no magic nibble,
//! index out of range) or a handle of another type (tag mismatch) is `BTB_ERROR_INVALID_HANDLE` —
//! including a double free — and btb never dereferences what C passes in.
//!
//! Layout of a handle value (64-bit): `0xB` magic (4 bits) | type tag (4) | generation (24) |
//! index (32). Real user-space pointers never carry the magic nibble.

use std::ffi::c_void;
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
        }
    }
}

/// An opaque C type backed by one `Object` variant.
pub(crate) trait Handle {
    const NAME: &'static str;
    const TAG: u64;
    type Inner: Clone;
    fn wrap(inner: Self::Inner) -> Object;
    fn unwrap(object: &Object) -> Option<&Self::Inner>;
}

macro_rules! handle_type {
    ($c:ident, $tag:literal, $variant:ident, $inner:ty) => {
        impl $crate::handle::Handle for $c {
            const NAME: &'static str = stringify!($c);
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

/// Registers an object and returns its handle.
pub(crate) fn insert<H: Handle>(inner: H::Inner) -> *mut H {
    let object = H::wrap(inner);
    let mut t = table();
    let index = match t.free.pop() {
        Some(i) => i,
        None => {
            t.slots.push(Slot {
                generation: 0,
                object: None,
            });
            (t.slots.len() - 1) as u32
        }
    };
    let slot = &mut t.slots[index as usize];
    slot.object = Some(object);
    let value =
        (MAGIC << 60) | (H::TAG << 56) | (u64::from(slot.generation) << 32) | u64::from(index);
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
        let slot = &mut t.slots[index];
        slot.generation = (slot.generation + 1) & GEN_MASK;
        let object = slot.object.take();
        t.free.push(index as u32);
        object
    };
    Ok(object.and_then(|o| H::unwrap(&o).cloned()))
}

/// Writes `value` through an out-pointer checked beforehand with [`out_ptr`].
pub(crate) fn write<T>(out: *mut T, value: T) {
    // SAFETY: callers check `out` is non-NULL with `out_ptr` first; the C caller promises it points
    // to writable storage of type T (documented on every function).
    unsafe { out.write(value) }
}

/// Checks an out-pointer before any work is done, so no result is lost to a NULL `out`.
pub(crate) fn out_ptr<T>(out: *mut T, what: &str) -> Result<*mut T> {
    if out.is_null() {
        Err(Error::new(
            ErrorKind::NullArgument,
            format!("{what} is NULL"),
        ))
    } else {
        Ok(out)
    }
}

/// `void *user_data` made sendable: btb passes it back to the callback as given.
#[derive(Clone, Copy)]
pub(crate) struct UserData(pub *mut c_void);
// SAFETY: btb never dereferences user data; the header tells callers it is used from btb threads.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}
