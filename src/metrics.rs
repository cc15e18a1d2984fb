//! Metrics in shared memory: the counting side, used everywhere (the
//! `sse_metrics` handler that exposes them is `http::metrics`; what is
//! counted and the text format are `sse_core::metrics`).
//!
//! One zone for the whole nginx, kept across reloads (same name, size and
//! tag), holding a slot of atomics per worker process. A worker claims a free
//! slot when it starts and counts into it without locks (relaxed atomic
//! adds on its own cache lines); when it exits, its counters are added to the
//! zone's `retired` totals and its gauges cleared, so counters stay
//! monotonic across reloads, as nginx's own stub_status counters do. A worker
//! that crashed cannot retire its slot: the next worker to start does it for
//! it (its pid is gone). A scrape sums `retired` and every slot.

use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::ptr::{self, addr_of};
use std::sync::atomic::{
    AtomicI64, AtomicU64,
    Ordering::{Acquire, Relaxed, Release},
};

use ngx::core::NGX_CONF_ERROR;
use ngx::ffi::{
    ngx_conf_t, ngx_int_t, ngx_pid, ngx_shared_memory_add, ngx_shm_zone_t, ngx_slab_calloc,
    ngx_slab_pool_t, ngx_str_t, NGX_ERROR, NGX_OK,
};
use sse_core::metrics::{Counter, Gauge, Snapshot};

/// Slots: far more than worker processes can be alive at once, old ones
/// shutting down after reloads included.
const SLOTS: usize = 256;
const ZONE_NAME: &str = "nginx_sse_metrics";
/// The zone holds a slab pool header and the `Shared` block.
const ZONE_SIZE: usize = 256 * 1024;

#[repr(C)]
struct Slot {
    /// The worker process counting here; 0: free.
    pid: AtomicI64,
    counters: [AtomicU64; Counter::COUNT],
    gauges: [AtomicI64; Gauge::COUNT],
}

#[repr(C)]
struct Shared {
    /// The counters of workers that exited.
    retired: [AtomicU64; Counter::COUNT],
    slots: [Slot; SLOTS],
}

thread_local! {
    /// This worker's slot; null outside workers (and before init).
    static SLOT: Cell<*const Slot> = const { Cell::new(ptr::null()) };
}

/// Adds `n` to a counter of this worker.
pub fn count(counter: Counter, n: u64) {
    with_slot(|s| s.counters[counter as usize].fetch_add(n, Relaxed));
}

/// Adds `delta` to a gauge of this worker.
pub fn gauge_add(gauge: Gauge, delta: i64) {
    with_slot(|s| s.gauges[gauge as usize].fetch_add(delta, Relaxed));
}

/// Sets a gauge of this worker.
pub fn gauge_set(gauge: Gauge, value: i64) {
    with_slot(|s| s.gauges[gauge as usize].store(value, Relaxed));
}

fn with_slot<R>(f: impl FnOnce(&Slot) -> R) {
    let slot = SLOT.with(Cell::get);
    // SAFETY: a non-null slot points into the shared zone, mapped for the
    // process's life, and is this worker's until `release`.
    if let Some(slot) = unsafe { slot.as_ref() } {
        f(slot);
    }
}

/// Configuration: adds the zone (or finds it again at reload).
///
/// # Safety
/// `cf` must be the configuration being parsed.
pub unsafe fn add_zone(cf: *mut ngx_conf_t) -> Result<*mut ngx_shm_zone_t, *mut c_char> {
    let mut name = ngx_str_t {
        len: ZONE_NAME.len(),
        data: ZONE_NAME.as_ptr() as *mut u8,
    };
    // The tag ties the zone to this module; nginx reuses a zone whose name,
    // size and tag match across reloads (the module stays loaded).
    let tag = addr_of!(crate::ngx_http_sse_module) as *mut c_void;
    // SAFETY: configuration time; nginx copies nothing of `name` it does
    // not keep (the static string outlives the cycle).
    let zone = unsafe { ngx_shared_memory_add(cf, &mut name, ZONE_SIZE, tag) };
    if zone.is_null() {
        return Err(NGX_CONF_ERROR as *mut c_char);
    }
    // SAFETY: a zone nginx just returned.
    unsafe { (*zone).init = Some(init_zone) };
    Ok(zone)
}

/// Zone initialisation (in the master, at each configuration load): keep
/// the block of the previous configuration, or allocate a zeroed one.
unsafe extern "C" fn init_zone(zone: *mut ngx_shm_zone_t, previous: *mut c_void) -> ngx_int_t {
    // SAFETY: nginx passes its zone; the memory starts with the slab pool
    // that nginx initialised.
    unsafe {
        if !previous.is_null() {
            (*zone).data = previous;
            return NGX_OK as ngx_int_t;
        }
        let pool = (*zone).shm.addr as *mut ngx_slab_pool_t;
        let block = ngx_slab_calloc(pool, std::mem::size_of::<Shared>());
        if block.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        (*zone).data = block;
    }
    NGX_OK as ngx_int_t
}

fn shared(zone: *mut ngx_shm_zone_t) -> Option<&'static Shared> {
    // SAFETY: the zone's data is the zeroed `Shared` block (all-zero atomics
    // are valid), mapped for the life of every process of this nginx.
    unsafe {
        zone.as_ref()
            .and_then(|z| (z.data as *const Shared).as_ref())
    }
}

/// Worker start: claim a slot (first freeing those of dead workers).
pub fn claim(zone: *mut ngx_shm_zone_t) {
    let Some(shared) = shared(zone) else {
        return;
    };
    // SAFETY: ngx_pid is set before modules' init_process runs.
    let me = i64::from(unsafe { ngx_pid });
    for slot in &shared.slots {
        let pid = slot.pid.load(Relaxed);
        // A slot still naming this very pid is stale too: this process has
        // not claimed anything yet (the pid of a dead worker was reused).
        let stale = pid > 0 && (pid == me || !alive(pid));
        if stale && slot.pid.compare_exchange(pid, -1, Acquire, Relaxed).is_ok() {
            retire(shared, slot);
        }
    }
    for slot in &shared.slots {
        // Acquire: the previous owner's clearing (Release below) is seen
        // before this worker counts into the slot.
        if slot.pid.compare_exchange(0, me, Acquire, Relaxed).is_ok() {
            SLOT.with(|s| s.set(slot));
            return;
        }
    }
}

/// Worker exit: its counters go to the retired totals, its slot is freed.
pub fn release(zone: *mut ngx_shm_zone_t) {
    let slot = SLOT.with(|s| s.replace(ptr::null()));
    // SAFETY: see with_slot.
    if let (Some(shared), Some(slot)) = (shared(zone), unsafe { slot.as_ref() }) {
        retire(shared, slot);
    }
}

fn retire(shared: &Shared, slot: &Slot) {
    // Added to the totals before the slot is cleared: a scrape in between
    // counts it twice for an instant rather than see a counter go down.
    for (total, counter) in shared.retired.iter().zip(&slot.counters) {
        let value = counter.load(Relaxed);
        total.fetch_add(value, Relaxed);
        counter.fetch_sub(value, Relaxed);
    }
    for gauge in &slot.gauges {
        gauge.store(0, Relaxed);
    }
    slot.pid.store(0, Release);
}

fn alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// The sum over retired totals and every slot, and how many workers count.
pub fn snapshot(zone: *mut ngx_shm_zone_t) -> (Snapshot, usize) {
    shared(zone).map(sum).unwrap_or_default()
}

fn sum(shared: &Shared) -> (Snapshot, usize) {
    let mut snap = Snapshot::default();
    for (sum, total) in snap.counters.iter_mut().zip(&shared.retired) {
        *sum = total.load(Relaxed);
    }
    let mut workers = 0;
    for slot in &shared.slots {
        if slot.pid.load(Relaxed) <= 0 {
            continue;
        }
        workers += 1;
        for (sum, c) in snap.counters.iter_mut().zip(&slot.counters) {
            *sum += c.load(Relaxed);
        }
        for (sum, g) in snap.gauges.iter_mut().zip(&slot.gauges) {
            *sum += g.load(Relaxed);
        }
    }
    (snap, workers)
}
