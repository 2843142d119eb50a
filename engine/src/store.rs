//! The memory-resident MVCC table store.
//!
//! Each table is a lock-free ordered map (`crossbeam_skiplist::SkipMap`) from primary key to a
//! version chain, newest first, plus a sharded hash index from key to the same chain. Point
//! reads and writes of existing keys (the commit and replay hot path) take one hash probe under
//! a shard's read lock, held for nanoseconds; the skiplist serves ordered range scans. A random
//! probe into a million-entry skiplist chases ~20 pointers, which profiling showed was most of
//! replay's time. Every version is stamped with the commit Lsn (the end Lsn of its
//! commit record); a reader at snapshot Lsn `s` sees, for each key, the newest version with
//! `lsn <= s`. Readers never take a lock the writer holds: they pin an epoch
//! (`crossbeam_epoch`), load atomic pointers and walk. The one writer — the committer on a
//! primary, the replayer on a replica or during crash recovery — pushes new versions at the head
//! and trims versions that no reader can see any more, deferring their free until no pinned
//! reader can still hold them.
//!
//! Data enters through `Store::write` (puts and deletes) and the DDL calls, all from the one
//! writer; it leaves through [`ReadView`]s, each registered at its Lsn so the writer's
//! reclamation horizon never passes a reader.
//!
//! The store also keeps the state digest: the wrapping sum over live tables of a hash of the
//! table definition plus, for each row, `xxh3(row bytes, seed = xxh3(table name))`. It is
//! order-independent and updated in O(1) per change.
//!
//! Invariants:
//! - Only the writer thread calls the `&self` mutation methods (`put`, `delete`, DDL, `publish`,
//!   `vacuum`); this is asserted by construction (they are reached only through the committer or
//!   a replayer, each of which owns the store's write half).
//! - In every chain, version Lsns strictly decrease from head to tail.
//! - `visible_lsn` never decreases; no reader sees a version with `lsn > visible_lsn`.

use crate::schema::{Catalog, TableDef, TableId};
use crate::value::{Key, Value};
use crossbeam_epoch::{self as epoch, Atomic, Guard, Owned, Shared};
use crossbeam_skiplist::SkipMap;
use hindsight_protocol::Lsn;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::ops::Bound;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

/// Shards of each table's hash index (a power of two).
pub const INDEX_SHARDS: usize = 64;
const _: () = assert!(INDEX_SHARDS.is_power_of_two());

type KeyMap = HashMap<Key, Arc<Chain>, BuildHasherDefault<rustc_hash::FxHasher>>;

/// Samples of (commit time, Lsn) kept to map the retention window to an Lsn.
pub const RETENTION_SAMPLES_MAX: usize = 4096;

/// The seed of every row hash of table `name`.
pub fn table_seed(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

/// The hash of one row of a table with seed `seed`.
#[inline]
pub fn row_hash(seed: u64, row: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(row, seed)
}

/// The digest contribution of a table definition (independent of its storage id).
pub fn def_hash(def: &TableDef) -> u64 {
    let mut bytes = Vec::new();
    let unnumbered = TableDef { id: TableId(0), ..def.clone() };
    unnumbered.encode(&mut bytes);
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, 0x6869_6e64_7369_6768)
}

struct Version {
    lsn: Lsn,
    row: Option<Box<[u8]>>,
    next: Atomic<Version>,
}

/// A key's versions, newest first.
pub(crate) struct Chain {
    head: Atomic<Version>,
}

impl Drop for Chain {
    fn drop(&mut self) {
        // SAFETY: a chain is dropped only when its skiplist entry is reclaimed, after every
        // reader that could reach it has unpinned, so no other thread holds these pointers.
        unsafe {
            let guard = epoch::unprotected();
            let mut cur = self.head.load(Ordering::Relaxed, guard);
            while !cur.is_null() {
                let next = cur.deref().next.load(Ordering::Relaxed, guard);
                drop(cur.into_owned());
                cur = next;
            }
        }
    }
}

impl Chain {
    /// The newest version visible at `lsn`: `Some(Some(row))`, `Some(None)` for a deletion,
    /// `None` when the key did not exist yet.
    #[inline]
    fn visible<'g>(&self, lsn: Lsn, guard: &'g Guard) -> Option<Option<&'g [u8]>> {
        let mut cur = self.head.load(Ordering::Acquire, guard);
        // SAFETY: versions are freed only through `defer_destroy` after being unlinked, and we
        // hold `guard`, so every pointer reachable from the head stays valid while we walk.
        while let Some(v) = unsafe { cur.as_ref() } {
            if v.lsn <= lsn {
                return Some(v.row.as_deref());
            }
            cur = v.next.load(Ordering::Acquire, guard);
        }
        None
    }
}

/// One table's rows.
pub(crate) struct TableData {
    pub(crate) def: Arc<TableDef>,
    /// Ordered, for range scans.
    rows: SkipMap<Key, Arc<Chain>>,
    /// The same chains by hash, for point access. Changed only by the writer, always together
    /// with `rows`.
    index: Box<[RwLock<KeyMap>]>,
    seed: u64,
    /// Sum of row hashes of the newest versions (writer-maintained).
    row_digest: AtomicU64,
    /// Number of live rows in the newest versions (writer-maintained).
    row_count: AtomicU64,
    /// Tombstones written since the last vacuum.
    tombstones: AtomicU64,
    /// The Lsn at which the table stopped being current (dropped or truncated); 0 while live.
    retired_at: AtomicU64,
}

impl TableData {
    fn new(def: Arc<TableDef>) -> TableData {
        let seed = table_seed(&def.name);
        TableData {
            def,
            rows: SkipMap::new(),
            index: (0..INDEX_SHARDS).map(|_| RwLock::new(KeyMap::default())).collect(),
            seed,
            row_digest: AtomicU64::new(0),
            row_count: AtomicU64::new(0),
            tombstones: AtomicU64::new(0),
            retired_at: AtomicU64::new(0),
        }
    }
}

/// The store. Shared as `Arc<Store>` by readers and its one writer.
pub struct Store {
    tables: RwLock<HashMap<TableId, Arc<TableData>>>,
    /// Catalog versions, ascending by Lsn; never empty.
    catalogs: RwLock<Vec<(Lsn, Arc<Catalog>)>>,
    visible_lsn: AtomicU64,
    /// Active read views by Lsn (a count per Lsn).
    readers: Mutex<BTreeMap<Lsn, usize>>,
    digest: AtomicU64,
    next_table_id: AtomicU32,
    retention_us: AtomicU64,
    samples: Mutex<VecDeque<(i64, Lsn)>>,
}

/// Statistics of the store.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    /// Live rows at the newest version.
    pub rows: u64,
    /// Tables.
    pub tables: usize,
}

impl TableData {
    fn shard(&self, key: &Key) -> &RwLock<KeyMap> {
        &self.index[Self::shard_no(key)]
    }

    fn shard_no(key: &Key) -> usize {
        let mut h = rustc_hash::FxHasher::default();
        key.hash(&mut h);
        (h.finish() >> (64 - INDEX_SHARDS.trailing_zeros())) as usize
    }

    /// Links a loaded chain into the ordered index (snapshot restore, see [`TableLoader`]).
    pub(crate) fn load_ordered(&self, key: Key, chain: Arc<Chain>) {
        self.rows.insert(key, chain);
    }

    /// Calls `f` with the chain of `key`, if the key has one, under its shard's read lock.
    #[inline]
    fn with_chain<R>(&self, key: &Key, f: impl FnOnce(&Chain) -> R) -> Option<R> {
        let shard = self.shard(key).read();
        shard.get(key).map(|c| f(c))
    }
}

/// Restores one table's rows from a snapshot, before any reader exists, split so that two
/// threads share the work: the loading thread makes each row's chain with [`TableLoader::add`]
/// and hands `(key, chain)` to a second thread that links it into the ordered index
/// ([`TableData::load_ordered`]); [`TableLoader::finish`] then builds the hash index one shard
/// at a time, so each shard's table stays in cache while it fills (inserting as rows arrive
/// would touch the whole index at random, a cache miss per row).
pub(crate) struct TableLoader {
    table: Arc<TableData>,
    /// The chains made so far, by hash-index shard.
    shards: Vec<Vec<(Key, Arc<Chain>)>>,
    digest: u64,
    rows: u64,
}

impl TableLoader {
    /// A loader for `table`, which is empty and expects about `rows_hint` rows.
    pub(crate) fn new(table: Arc<TableData>, rows_hint: usize) -> TableLoader {
        // A hint from the snapshot itself: sizing past this lets the buffers grow instead.
        const ROWS_HINT_MAX: usize = 1 << 24;
        let rows_hint = rows_hint.min(ROWS_HINT_MAX);
        let per_shard = rows_hint / INDEX_SHARDS + rows_hint / INDEX_SHARDS / 8;
        TableLoader {
            table,
            shards: (0..INDEX_SHARDS).map(|_| Vec::with_capacity(per_shard)).collect(),
            digest: 0,
            rows: 0,
        }
    }

    /// The table being loaded.
    pub(crate) fn table(&self) -> &Arc<TableData> {
        &self.table
    }

    /// Makes the chain of a loaded row, whose only version is at `lsn`; returns what the
    /// ordered index needs.
    pub(crate) fn add(&mut self, key: Key, row: Box<[u8]>, lsn: Lsn) -> (Key, Arc<Chain>) {
        self.digest = self.digest.wrapping_add(row_hash(self.table.seed, &row));
        self.rows += 1;
        let chain =
            Arc::new(Chain { head: Atomic::new(Version { lsn, row: Some(row), next: Atomic::null() }) });
        self.shards[TableData::shard_no(&key)].push((key.clone(), Arc::clone(&chain)));
        (key, chain)
    }

    /// Builds the hash index and adds the rows to the table's and the store's digest and
    /// count. Fails on a key loaded twice (the caller reports the snapshot as corrupt).
    pub(crate) fn finish(self, store: &Store) -> std::result::Result<(), Key> {
        for (entries, shard) in self.shards.into_iter().zip(self.table.index.iter()) {
            let mut shard = shard.write();
            shard.reserve(entries.len());
            for (key, chain) in entries {
                if let Some(_previous) = shard.insert(key.clone(), chain) {
                    return Err(key);
                }
            }
        }
        self.table.row_digest.fetch_add(self.digest, Ordering::Relaxed);
        self.table.row_count.fetch_add(self.rows, Ordering::Relaxed);
        store.digest.fetch_add(self.digest, Ordering::Relaxed);
        Ok(())
    }
}

impl Store {
    /// An empty store whose state is at `lsn`.
    pub fn new(lsn: Lsn) -> Store {
        Store {
            tables: RwLock::new(HashMap::new()),
            catalogs: RwLock::new(vec![(Lsn::ZERO, Arc::new(Catalog::default()))]),
            visible_lsn: AtomicU64::new(lsn.0),
            readers: Mutex::new(BTreeMap::new()),
            digest: AtomicU64::new(0),
            next_table_id: AtomicU32::new(1),
            retention_us: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::new()),
        }
    }

    /// Sets how long (microseconds of commit time) old versions are kept for time travel.
    pub fn set_retention_us(&self, us: u64) {
        self.retention_us.store(us, Ordering::Relaxed);
    }

    /// The Lsn readers see: everything committed (and durable) up to here.
    pub fn visible_lsn(&self) -> Lsn {
        Lsn(self.visible_lsn.load(Ordering::Acquire))
    }

    /// The digest of the newest state (including versions not yet visible).
    pub fn digest(&self) -> u64 {
        self.digest.load(Ordering::Acquire)
    }

    /// Statistics of the newest state.
    pub fn stats(&self) -> StoreStats {
        let catalog = self.newest_catalog();
        let tables = self.tables.read();
        let rows = catalog
            .tables()
            .filter_map(|d| tables.get(&d.id))
            .map(|t| t.row_count.load(Ordering::Relaxed))
            .sum();
        StoreStats { rows, tables: catalog.len() }
    }

    /// A table id never used before.
    pub fn allocate_table_id(&self) -> TableId {
        TableId(self.next_table_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Makes sure future ids are above `id` (replay of DDL from another writer).
    pub fn note_table_id(&self, id: TableId) {
        self.next_table_id.fetch_max(id.0.saturating_add(1), Ordering::Relaxed);
    }

    /// The next table id that will be allocated.
    pub fn next_table_id(&self) -> u32 {
        self.next_table_id.load(Ordering::Relaxed)
    }

    /// Opens a read view at the visible Lsn.
    pub fn read_view(self: &Arc<Store>) -> ReadView {
        let lsn = {
            let mut readers = self.readers.lock();
            let lsn = self.visible_lsn();
            *readers.entry(lsn).or_insert(0) += 1;
            lsn
        };
        self.view_registered(lsn)
    }

    /// Opens a read view at an older `lsn`, if versions back to it are still kept (inside the
    /// retention window or held by another view). Returns `None` when they may be gone.
    pub fn read_view_at(self: &Arc<Store>, lsn: Lsn) -> Option<ReadView> {
        {
            let mut readers = self.readers.lock();
            if lsn > self.visible_lsn() || lsn < self.horizon_locked(&readers) {
                return None;
            }
            *readers.entry(lsn).or_insert(0) += 1;
        }
        Some(self.view_registered(lsn))
    }

    fn view_registered(self: &Arc<Store>, lsn: Lsn) -> ReadView {
        let catalog = self.catalog_at(lsn);
        ReadView { store: Arc::clone(self), lsn, catalog }
    }

    fn unregister(&self, lsn: Lsn) {
        let mut readers = self.readers.lock();
        let n = readers.get_mut(&lsn).expect("read view registered");
        *n -= 1;
        if *n == 0 {
            readers.remove(&lsn);
        }
    }

    /// The oldest Lsn any reader may still read at; versions needed only below it can go.
    pub fn horizon(&self) -> Lsn {
        let readers = self.readers.lock();
        self.horizon_locked(&readers)
    }

    fn horizon_locked(&self, readers: &BTreeMap<Lsn, usize>) -> Lsn {
        let mut h = self.visible_lsn();
        if let Some((&oldest, _)) = readers.iter().next() {
            h = h.min(oldest);
        }
        let retention = self.retention_us.load(Ordering::Relaxed);
        if retention > 0 {
            let samples = self.samples.lock();
            if let Some(&(newest_time, _)) = samples.back() {
                let cutoff = newest_time.saturating_sub(retention as i64);
                // The newest sample at or before the cutoff; keep everything after it.
                let keep = samples.iter().rev().find(|(t, _)| *t <= cutoff).map(|&(_, l)| l);
                h = h.min(keep.unwrap_or_else(|| samples.front().map(|&(_, l)| l).unwrap_or(h)));
            }
        }
        h
    }

    fn catalog_at(&self, lsn: Lsn) -> Arc<Catalog> {
        let catalogs = self.catalogs.read();
        let i = catalogs.partition_point(|(l, _)| *l <= lsn);
        Arc::clone(&catalogs[i.max(1) - 1].1)
    }

    /// The newest catalog, including DDL not yet visible (writer's view).
    pub fn newest_catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalogs.read().last().expect("catalog history never empty").1)
    }

    pub(crate) fn table_data(&self, id: TableId) -> Option<Arc<TableData>> {
        self.tables.read().get(&id).cloned()
    }

    /// Makes everything up to `lsn` visible to new readers; `commit_time_us` feeds the
    /// retention window. Writer only.
    pub fn publish(&self, lsn: Lsn, commit_time_us: i64) {
        let old = self.visible_lsn.load(Ordering::Relaxed);
        assert!(lsn.0 >= old, "visible Lsn regression {} -> {}", Lsn(old), lsn);
        if self.retention_us.load(Ordering::Relaxed) > 0 {
            let mut samples = self.samples.lock();
            let far_enough = samples.back().is_none_or(|&(t, _)| commit_time_us - t >= 10_000);
            if far_enough {
                if samples.len() == RETENTION_SAMPLES_MAX {
                    samples.pop_front();
                }
                samples.push_back((commit_time_us, lsn));
            }
        }
        self.visible_lsn.store(lsn.0, Ordering::Release);
    }

    /// Replaces the whole state's Lsn after loading a snapshot. Writer only, before readers.
    pub fn reset_visible(&self, lsn: Lsn) {
        self.visible_lsn.store(lsn.0, Ordering::Release);
    }

    // ----- writer side -----

    /// Creates table `def` at `lsn`. Writer only.
    pub fn create_table(&self, def: Arc<TableDef>, lsn: Lsn) {
        self.note_table_id(def.id);
        let h = def_hash(&def);
        self.tables.write().insert(def.id, Arc::new(TableData::new(Arc::clone(&def))));
        let catalog = self.newest_catalog().with(def);
        self.push_catalog(lsn, catalog);
        self.digest.fetch_add(h, Ordering::AcqRel);
    }

    /// Drops the table `name` at `lsn`. Writer only; the caller checked it exists.
    pub fn drop_table(&self, name: &str, lsn: Lsn) {
        let catalog = self.newest_catalog();
        let def = Arc::clone(catalog.get(name).expect("drop of an existing table"));
        let data = self.table_data(def.id).expect("table data of a live table");
        data.retired_at.store(lsn.0, Ordering::Release);
        let sub = def_hash(&def).wrapping_add(data.row_digest.load(Ordering::Acquire));
        self.digest.fetch_sub(sub, Ordering::AcqRel);
        self.push_catalog(lsn, catalog.without(name));
    }

    /// Moves `name` to a new empty table `new_id` at `lsn`. Writer only.
    pub fn truncate_table(&self, name: &str, new_id: TableId, lsn: Lsn) {
        let catalog = self.newest_catalog();
        let old = Arc::clone(catalog.get(name).expect("truncate of an existing table"));
        let data = self.table_data(old.id).expect("table data of a live table");
        data.retired_at.store(lsn.0, Ordering::Release);
        self.digest.fetch_sub(data.row_digest.load(Ordering::Acquire), Ordering::AcqRel);
        let def = Arc::new(TableDef { id: new_id, ..(*old).clone() });
        self.note_table_id(new_id);
        self.tables.write().insert(new_id, Arc::new(TableData::new(Arc::clone(&def))));
        self.push_catalog(lsn, catalog.with(def));
    }

    fn push_catalog(&self, lsn: Lsn, catalog: Catalog) {
        let mut catalogs = self.catalogs.write();
        let last = catalogs.last().expect("catalog history never empty").0;
        assert!(lsn >= last, "catalog Lsn regression {last} -> {lsn}");
        if last == lsn {
            catalogs.pop();
        }
        catalogs.push((lsn, Arc::new(catalog)));
    }

    /// The Lsn of the newest version of `key` (visible or not), for conflict checks. Writer only.
    pub(crate) fn newest_version_lsn(&self, table: &TableData, key: &Key) -> Option<Lsn> {
        let guard = epoch::pin();
        table
            .with_chain(key, |chain| {
                let head = chain.head.load(Ordering::Acquire, &guard);
                // SAFETY: see `Chain::visible`.
                unsafe { head.as_ref() }.map(|v| v.lsn)
            })
            .flatten()
    }

    /// Writes `row` (Some) or a deletion (None) for `key` at `lsn`, trims versions older than
    /// `horizon` needs, and updates the digest. Returns whether a live row existed before, or
    /// `Err(newest)` without changing anything when the key already has a version at or after
    /// `lsn` (a malformed WAL touching one key twice in a transaction). Writer only.
    pub(crate) fn write(
        &self,
        table: &TableData,
        key: Key,
        row: Option<Box<[u8]>>,
        lsn: Lsn,
        horizon: Lsn,
    ) -> Result<bool, Lsn> {
        let guard = epoch::pin();
        let mut row = Some(row);
        let pushed = table.with_chain(&key, |chain| {
            self.push_version(table, chain, row.take().expect("taken once"), lsn, horizon, &guard)
        });
        if let Some(r) = pushed {
            return r;
        }
        let row = row.expect("not taken when the key is new");
        // A new key: complete its chain first, then make it reachable through both indexes.
        let chain = Arc::new(Chain { head: Atomic::null() });
        let r = self.push_version(table, &chain, row, lsn, horizon, &guard);
        table.rows.insert(key.clone(), Arc::clone(&chain));
        table.shard(&key).write().insert(key, chain);
        r
    }

    fn push_version(
        &self,
        table: &TableData,
        chain: &Chain,
        row: Option<Box<[u8]>>,
        lsn: Lsn,
        horizon: Lsn,
        guard: &Guard,
    ) -> Result<bool, Lsn> {
        let head = chain.head.load(Ordering::Acquire, guard);
        // SAFETY: see `Chain::visible`; the writer is the only thread that unlinks versions.
        let old = unsafe { head.as_ref() };
        if let Some(old) = old {
            if old.lsn >= lsn {
                return Err(old.lsn);
            }
        }
        let new_hash = row.as_deref().map(|r| row_hash(table.seed, r));
        let is_delete = row.is_none();
        let old_hash = old.and_then(|v| v.row.as_deref()).map(|r| row_hash(table.seed, r));
        let existed = old_hash.is_some();
        let delta = new_hash.unwrap_or(0).wrapping_sub(old_hash.unwrap_or(0));
        table.row_digest.fetch_add(delta, Ordering::AcqRel);
        self.digest.fetch_add(delta, Ordering::AcqRel);
        match (existed, new_hash.is_some()) {
            (false, true) => {
                table.row_count.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                table.row_count.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        if is_delete {
            table.tombstones.fetch_add(1, Ordering::Relaxed);
        }
        let new = Owned::new(Version { lsn, row, next: Atomic::from(head) }).into_shared(guard);
        chain.head.store(new, Ordering::Release);
        trim(new, horizon, guard);
        Ok(existed)
    }

    /// Removes what no reader can see any more: tombstoned keys below the horizon, retired
    /// tables and old catalog versions. Writer only.
    pub fn vacuum(&self) {
        let horizon = self.horizon();
        let tables: Vec<Arc<TableData>> = self.tables.read().values().cloned().collect();
        let mut gone = Vec::new();
        for t in tables {
            let retired = t.retired_at.load(Ordering::Acquire);
            if retired != 0 && Lsn(retired) <= horizon {
                gone.push(t.def.id);
                continue;
            }
            if t.tombstones.swap(0, Ordering::Relaxed) == 0 {
                continue;
            }
            let guard = epoch::pin();
            for entry in t.rows.iter() {
                let head = entry.value().head.load(Ordering::Acquire, &guard);
                // SAFETY: see `Chain::visible`.
                let Some(v) = (unsafe { head.as_ref() }) else { continue };
                if v.row.is_none() && v.lsn <= horizon {
                    t.shard(entry.key()).write().remove(entry.key());
                    entry.remove();
                } else {
                    trim(head, horizon, &guard);
                }
            }
        }
        if !gone.is_empty() {
            let mut tables = self.tables.write();
            for id in gone {
                tables.remove(&id);
            }
        }
        let mut catalogs = self.catalogs.write();
        let keep_from = catalogs.partition_point(|(l, _)| *l <= horizon).saturating_sub(1);
        catalogs.drain(..keep_from);
    }

    /// Number of live rows in table `id` at the newest version.
    pub fn row_count(&self, id: TableId) -> u64 {
        self.table_data(id).map_or(0, |t| t.row_count.load(Ordering::Relaxed))
    }

    /// Recomputes the digest from every live row (slow; for verification).
    pub fn recompute_digest(&self) -> u64 {
        let catalog = self.newest_catalog();
        let guard = epoch::pin();
        let mut sum = 0u64;
        for def in catalog.tables() {
            sum = sum.wrapping_add(def_hash(def));
            let Some(t) = self.table_data(def.id) else { continue };
            for entry in t.rows.iter() {
                let head = entry.value().head.load(Ordering::Acquire, &guard);
                // SAFETY: see `Chain::visible`.
                if let Some(row) = unsafe { head.as_ref() }.and_then(|v| v.row.as_deref()) {
                    sum = sum.wrapping_add(row_hash(t.seed, row));
                }
            }
        }
        sum
    }
}

/// Unlinks and frees the versions after the newest one with `lsn <= horizon`: no reader can
/// reach them through a snapshot at or above the horizon.
fn trim(head: Shared<'_, Version>, horizon: Lsn, guard: &Guard) {
    let mut cur = head;
    // SAFETY: see `Chain::visible`; only the writer unlinks, so `cur` stays linked while we walk.
    while let Some(v) = unsafe { cur.as_ref() } {
        if v.lsn <= horizon {
            let mut tail = v.next.swap(Shared::null(), Ordering::AcqRel, guard);
            while !tail.is_null() {
                // SAFETY: `tail` was just unlinked; readers pinned before may still hold it, so
                // it is freed only once they unpin.
                unsafe {
                    let next = tail.deref().next.load(Ordering::Acquire, guard);
                    guard.defer_destroy(tail);
                    tail = next;
                }
            }
            return;
        }
        cur = v.next.load(Ordering::Acquire, guard);
    }
}

/// A consistent read-only view of the store at one Lsn.
///
/// Invariants:
/// - Registered with the store for its whole life, so the versions it can see are kept.
/// - Sees exactly the state committed at `lsn`: rows and table definitions alike.
pub struct ReadView {
    store: Arc<Store>,
    lsn: Lsn,
    catalog: Arc<Catalog>,
}

impl Drop for ReadView {
    fn drop(&mut self) {
        self.store.unregister(self.lsn);
    }
}

impl std::fmt::Debug for ReadView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadView").field("lsn", &self.lsn).finish_non_exhaustive()
    }
}

impl Clone for ReadView {
    fn clone(&self) -> ReadView {
        *self.store.readers.lock().entry(self.lsn).or_insert(0) += 1;
        ReadView { store: Arc::clone(&self.store), lsn: self.lsn, catalog: Arc::clone(&self.catalog) }
    }
}

impl ReadView {
    /// The Lsn this view reads at.
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// The tables as of this view.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The table named `name`, as of this view.
    pub fn table(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.catalog.get(name)
    }

    /// The encoded row of `key` in `table`, as of this view.
    pub fn get_raw(&self, table: &TableDef, key: &Key) -> Option<Box<[u8]>> {
        let data = self.store.table_data(table.id)?;
        let guard = epoch::pin();
        data.with_chain(key, |chain| chain.visible(self.lsn, &guard).flatten().map(Box::from)).flatten()
    }

    /// The decoded row of `key` in `table`, as of this view.
    pub fn get(&self, table: &TableDef, key: &Key) -> Option<Vec<Value>> {
        let raw = self.get_raw(table, key)?;
        Some(
            crate::value::decode_row(&table.types, &raw)
                .expect("rows in the store were checked when written"),
        )
    }

    /// Calls `f(key, encoded row)` for each row of `table` with a key in the range, in key
    /// order, until `f` returns false.
    pub fn scan(
        &self,
        table: &TableDef,
        lower: Bound<&Key>,
        upper: Bound<&Key>,
        mut f: impl FnMut(&Key, &[u8]) -> bool,
    ) {
        let Some(data) = self.store.table_data(table.id) else { return };
        if let (Bound::Included(l) | Bound::Excluded(l), Bound::Included(u) | Bound::Excluded(u)) =
            (lower, upper)
        {
            if l > u {
                return;
            }
        }
        let mut guard = epoch::pin();
        for (n, entry) in data.rows.range((lower, upper)).enumerate() {
            if n % 1024 == 1023 {
                // Let reclamation advance during long scans.
                guard.repin();
            }
            if let Some(Some(row)) = entry.value().visible(self.lsn, &guard) {
                if !f(entry.key(), row) {
                    return;
                }
            }
        }
    }

    /// The store behind the view.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::ColumnDef;
    use crate::value::{encode_row, DataType};

    fn accounts(store: &Store, lsn: Lsn) -> Arc<TableDef> {
        let def = Arc::new(
            TableDef::new(
                store.allocate_table_id(),
                "accounts".into(),
                vec![
                    ColumnDef { name: "id".into(), data_type: DataType::BigInt, nullable: false },
                    ColumnDef { name: "balance".into(), data_type: DataType::BigInt, nullable: false },
                ],
                0,
            )
            .unwrap(),
        );
        store.create_table(Arc::clone(&def), lsn);
        def
    }

    fn row(id: i64, balance: i64) -> Box<[u8]> {
        let mut b = Vec::new();
        encode_row(&[DataType::BigInt, DataType::BigInt], &[Value::Int(id), Value::Int(balance)], &mut b)
            .unwrap();
        b.into()
    }

    #[test]
    fn views_see_exactly_their_lsn_and_hold_back_trimming() {
        let store = Arc::new(Store::new(Lsn(0)));
        let def = accounts(&store, Lsn(10));
        let data = store.table_data(def.id).unwrap();
        store.write(&data, Key::Int(1), Some(row(1, 100)), Lsn(20), store.horizon()).unwrap();
        store.publish(Lsn(20), 0);
        let old = store.read_view();
        store.write(&data, Key::Int(1), Some(row(1, 200)), Lsn(30), store.horizon()).unwrap();
        // Not yet published: new views still see 100.
        assert_eq!(store.read_view().get(&def, &Key::Int(1)), Some(vec![Value::Int(1), Value::Int(100)]));
        store.publish(Lsn(30), 0);
        store.write(&data, Key::Int(1), None, Lsn(40), store.horizon()).unwrap();
        store.publish(Lsn(40), 0);
        assert_eq!(old.get(&def, &Key::Int(1)), Some(vec![Value::Int(1), Value::Int(100)]));
        assert_eq!(store.read_view_at(Lsn(30)).unwrap().get(&def, &Key::Int(1)).unwrap()[1], Value::Int(200));
        assert_eq!(store.read_view().get(&def, &Key::Int(1)), None);
        drop(old);
        store.vacuum();
        assert!(store.read_view_at(Lsn(20)).is_none(), "versions below the horizon are gone");
        assert_eq!(store.digest(), store.recompute_digest());
    }

    #[test]
    fn digest_is_order_independent_and_tracks_ddl() {
        let a = Arc::new(Store::new(Lsn(0)));
        let b = Arc::new(Store::new(Lsn(0)));
        let da = accounts(&a, Lsn(1));
        let db = accounts(&b, Lsn(1));
        let (ta, tb) = (a.table_data(da.id).unwrap(), b.table_data(db.id).unwrap());
        for i in 0..100 {
            a.write(&ta, Key::Int(i), Some(row(i, i)), Lsn(2 + i as u64), Lsn(0)).unwrap();
        }
        for i in (0..100).rev() {
            b.write(&tb, Key::Int(i), Some(row(i, i)), Lsn(200 - i as u64), Lsn(0)).unwrap();
        }
        assert_eq!(a.digest(), b.digest());
        assert_eq!(a.digest(), a.recompute_digest());
        a.truncate_table("accounts", a.allocate_table_id(), Lsn(300));
        let empty = Arc::new(Store::new(Lsn(0)));
        accounts(&empty, Lsn(1));
        assert_eq!(a.digest(), empty.digest());
        a.drop_table("accounts", Lsn(301));
        assert_eq!(a.digest(), 0);
    }
}
