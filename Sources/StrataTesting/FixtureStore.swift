// FixtureStore — a small real key/value store for testing the harness itself, with switches
// that plant the classic crash-consistency bugs.
//
// Theory. A harness that passes a buggy store is a defect, so the harness is tested on a store
// that is small enough to read in one sitting and real enough to have the bugs production
// stores have. It runs on two devices, like a pool with a metadata and a data role:
//
//   meta (1 MiB, 4 KiB blocks)                          data (1 MiB, 4 KiB blocks)
//   ┌────────┬────────┬──────────────┬──────────────┬──────────────────────┐   ┌──────────────────┐
//   │ root 0 │ root 1 │ checkpoint 0 │ checkpoint 1 │ intent log           │   │ value blocks     │
//   │ 2 blk  │ 2 blk  │ 16 blocks    │ 16 blocks    │ blocks 36..<256      │   │ 256 blocks       │
//   └────────┴────────┴──────────────┴──────────────┴──────────────────────┘   └──────────────────┘
//
// - **Root** (two slots used in turn; the newest valid one wins): header block
//   (magic, version, generation, which checkpoint region, its length and crc32c, the log's
//   first sequence) and a trailer block (the generation again and the data device's allocation
//   bitmap). A crc32c over both blocks sits in the header, so a root torn between its two
//   sectors is rejected and the older slot is used. Written with FUA after the checkpoint it
//   points to is flushed, always into the slot (and checkpoint region) the current root does
//   not use, with a generation above every generation seen in either slot's header — valid or
//   not. (Found by this harness, crash during recovery: a recovery that reused the generation
//   of a torn root could leave two same-generation halves that passed the checksum together.)
// - **Checkpoint**: the whole table (key → length, crc32c, inline bytes or data blocks),
//   written copy-on-write into the region the current root does not use.
// - **Intent log**: records appended from block 36 in batches (group commit); each record is
//   whole blocks with magic, the root generation it follows (epoch), a sequence number, and a
//   crc32c. Values up to 6000 bytes travel inside the record (so a record can span two
//   sectors and be torn); larger values are written to freshly allocated data blocks first.
//
// Durability. `put`/`delete` change memory, write large values to the data device, and queue
// a record. `sync` flushes the data device, writes the batch, flushes the meta device, then
// fires the commit callbacks. `checkpoint` (every 4 syncs, when the log is full, and after a
// recovery that replayed anything) flushes data, writes the table, flushes, writes the root
// with FUA, and only then releases blocks freed since the previous checkpoint (they are still
// referenced by the durable state until then). Open picks the newest valid root, loads its
// checkpoint, and replays the log until the first record whose magic, epoch, sequence or
// checksum is wrong (a torn tail), each record exactly once.
//
// Planted bugs (`Bugs`): acknowledge before the flush; write the root without a checksum (and
// trust it); reuse a freed block before the next checkpoint; replay a torn log tail (skip the
// record checksum). `check()` is the store's fsck: root trailer, bitmap against the table,
// doubly-owned, leaked and unreadable blocks.

import StrataIO

/// Errors of the fixture store.
public enum FixtureStoreError: Error, CustomStringConvertible, Sendable {
    case io(IOError)
    case noValidRoot
    case corrupt(String)
    case noSpace(String)
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .io(let error): return "I/O: \(error)"
        case .noValidRoot: return "no valid root in either slot"
        case .corrupt(let what): return "corrupt: \(what)"
        case .noSpace(let what): return "no space: \(what)"
        case .invalidArgument(let what): return "invalid argument: \(what)"
        }
    }
}

/// A two-device log-structured key/value store with a checksummed root, and planted-bug
/// switches. Single-threaded.
public final class FixtureStore {
    /// Bugs that can be planted, to prove the harness catches them.
    public struct Bugs: OptionSet, Sendable, Hashable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }

        /// Fire commit callbacks when the operation is queued, before any flush.
        public static let ackBeforeFlush = Bugs(rawValue: 1 << 0)
        /// Write the root with a zero checksum and accept any root with the right magic.
        public static let rootWithoutChecksum = Bugs(rawValue: 1 << 1)
        /// Make a freed data block allocatable at once instead of after the next checkpoint.
        public static let reuseFreedBlockBeforeCheckpoint = Bugs(rawValue: 1 << 2)
        /// Replay log records without checking their checksum.
        public static let replayTornLogTail = Bugs(rawValue: 1 << 3)

        /// Every bug with its command-line name.
        public static let named: [(name: String, bug: Bugs)] = [
            ("ack-before-flush", .ackBeforeFlush),
            ("root-without-checksum", .rootWithoutChecksum),
            ("reuse-freed-block", .reuseFreedBlockBeforeCheckpoint),
            ("replay-torn-tail", .replayTornLogTail),
        ]
    }

    // MARK: Layout (block numbers on the meta device; every block is 4 KiB)
    public static let blockBytes = 4096
    public static let metaSizeBytes: UInt64 = 1 << 20
    public static let dataSizeBytes: UInt64 = 1 << 20
    static let rootSlotFirstBlocks: [UInt64] = [0, 2]
    static let checkpointRegionFirstBlocks: [UInt64] = [4, 20]
    static let checkpointRegionBlocks = 16
    static let logFirstBlock: UInt64 = 36
    static let logEndBlock: UInt64 = 256
    static let dataBlockCount = Int(dataSizeBytes) / blockBytes
    /// Largest value stored inside a log record (two sectors with the header).
    public static let inlineValueBytesMax = 6000
    /// Largest value (four data blocks).
    public static let valueBytesMax = 16384
    /// Longest key, in UTF-8 bytes.
    public static let keyBytesMax = 32
    /// Most keys (the checkpoint table must fit its 64 KiB region).
    public static let keyCountMax = 8
    /// Syncs between checkpoints.
    public static let syncsPerCheckpoint = 4

    static let rootMagic: UInt64 = 0x5354_5246_4958_5254   // "STRFIXRT"
    static let logMagic: UInt32 = 0x4C4F_4752              // "LOGR"
    static let version: UInt32 = 1
    static let logHeaderBytes = 32

    enum Location: Equatable {
        case inline([UInt8])
        case blocks([UInt32])
    }

    struct Entry: Equatable {
        var length: Int
        var checksum: UInt32
        var location: Location

        var blocks: [UInt32] {
            if case .blocks(let blocks) = location { return blocks }
            return []
        }
    }

    public let meta: any BlockStorage
    public let data: any BlockStorage
    public let bugs: Bugs

    var table: [String: Entry] = [:]
    var allocated = [Bool](repeating: false, count: FixtureStore.dataBlockCount)
    var pendingFree: [UInt32] = []
    var generation: UInt64 = 0
    /// The root slot (and checkpoint region) of the current root; the next checkpoint goes to
    /// the other one.
    var activeSlot = 0
    /// The highest generation in either root slot's header, valid or not: a new root must
    /// exceed it, or a torn mix of two roots of one generation could pass the checksum.
    var highestGenerationSeen: UInt64 = 0
    var logNextBlock = FixtureStore.logFirstBlock
    var logNextSequence: UInt64 = 1
    var batch: [[UInt8]] = []
    var waiting: [() -> Void] = []
    var dataDirty = false
    var syncsSinceCheckpoint = 0
    /// Problems found while opening (reported by `check()`).
    var openFindings: [String] = []
    /// Records replayed by the last open.
    public private(set) var replayedRecordCount = 0

    private init(meta: any BlockStorage, data: any BlockStorage, bugs: Bugs) {
        self.meta = meta
        self.data = data
        self.bugs = bugs
    }

    // MARK: Format and open

    /// Writes an empty store (generation 1, empty table) to `meta` and `data`.
    public static func format(meta: any BlockStorage, data: any BlockStorage, bugs: Bugs = []) throws(FixtureStoreError) {
        try checkGeometry(meta: meta, data: data)
        let store = FixtureStore(meta: meta, data: data, bugs: bugs)
        try store.writeCheckpoint()
    }

    /// Opens the store: picks the newest valid root, loads its checkpoint, replays the log,
    /// and checkpoints if anything was replayed.
    public static func open(meta: any BlockStorage, data: any BlockStorage, bugs: Bugs = []) throws(FixtureStoreError) -> FixtureStore {
        try checkGeometry(meta: meta, data: data)
        let store = FixtureStore(meta: meta, data: data, bugs: bugs)
        try store.load()
        if store.replayedRecordCount > 0 { try store.checkpoint() }
        return store
    }

    private static func checkGeometry(meta: any BlockStorage, data: any BlockStorage) throws(FixtureStoreError) {
        guard meta.blockSizeBytes <= blockBytes, data.blockSizeBytes <= blockBytes,
              meta.sizeBytes >= metaSizeBytes, data.sizeBytes >= dataSizeBytes else {
            throw .invalidArgument("devices must be at least 1 MiB with blocks of at most 4 KiB")
        }
    }

    // MARK: Operations

    /// Sets `key` to `value`; `onDurable` fires once the change is durable.
    public func put(_ key: String, _ value: [UInt8], onDurable: @escaping () -> Void = {}) throws(FixtureStoreError) {
        guard !key.isEmpty, key.utf8.count <= Self.keyBytesMax else { throw .invalidArgument("key '\(key)'") }
        guard value.count <= Self.valueBytesMax else { throw .invalidArgument("value of \(value.count) bytes") }
        guard table[key] != nil || table.count < Self.keyCountMax else { throw .noSpace("more than \(Self.keyCountMax) keys") }
        let checksum = CRC32C.checksum(value)
        let location: Location
        if value.count <= Self.inlineValueBytesMax {
            location = .inline(value)
        } else {
            let count = (value.count + Self.blockBytes - 1) / Self.blockBytes
            var blocks = allocate(count)
            if blocks == nil, !pendingFree.isEmpty {
                try checkpoint()
                blocks = allocate(count)
            }
            guard let blocks else { throw .noSpace("\(count) data blocks for key '\(key)'") }
            for (index, block) in blocks.enumerated() {
                var chunk = [UInt8](repeating: 0, count: Self.blockBytes)
                let start = index * Self.blockBytes
                let end = min(value.count, start + Self.blockBytes)
                chunk.replaceSubrange(0..<(end - start), with: value[start..<end])
                try writeBlock(chunk, to: data, block: UInt64(block))
            }
            dataDirty = true
            location = .blocks(blocks)
        }
        let entry = Entry(length: value.count, checksum: checksum, location: location)
        if let old = table[key] { free(old.blocks) }
        table[key] = entry
        var payload = FixtureRecordWriter()
        payload.u8(1)
        payload.string(key)
        Self.encode(entry, into: &payload)
        enqueue(payload.bytes, onDurable: onDurable)
    }

    /// Removes `key` (no effect when absent); `onDurable` fires once the change is durable.
    public func delete(_ key: String, onDurable: @escaping () -> Void = {}) throws(FixtureStoreError) {
        guard !key.isEmpty, key.utf8.count <= Self.keyBytesMax else { throw .invalidArgument("key '\(key)'") }
        if let old = table.removeValue(forKey: key) { free(old.blocks) }
        var payload = FixtureRecordWriter()
        payload.u8(2)
        payload.string(key)
        enqueue(payload.bytes, onDurable: onDurable)
    }

    /// Group commit: makes every queued change durable, then fires their callbacks.
    public func sync() throws(FixtureStoreError) {
        guard !batch.isEmpty else {
            fireCallbacks()
            return
        }
        var log: [UInt8] = []
        var sequence = logNextSequence
        for payload in batch {
            log += encodeRecord(payload, sequence: sequence)
            sequence += 1
        }
        let blocks = UInt64(log.count / Self.blockBytes)
        guard logNextBlock + blocks <= Self.logEndBlock else {
            try checkpoint()
            return
        }
        if dataDirty {
            try flush(data)
            dataDirty = false
        }
        try write(log, to: meta, at: logNextBlock * UInt64(Self.blockBytes), fua: false)
        try flush(meta)
        logNextBlock += blocks
        logNextSequence = sequence
        batch = []
        fireCallbacks()
        syncsSinceCheckpoint += 1
        if syncsSinceCheckpoint >= Self.syncsPerCheckpoint { try checkpoint() }
    }

    /// Writes the whole table as a new checkpoint and root; restarts the log; releases blocks
    /// freed since the previous checkpoint; fires every pending callback.
    public func checkpoint() throws(FixtureStoreError) {
        try writeCheckpoint()
        logNextBlock = Self.logFirstBlock
        batch = []
        for block in pendingFree { allocated[Int(block)] = false }
        pendingFree = []
        syncsSinceCheckpoint = 0
        fireCallbacks()
    }

    /// The value of `key`, verified against its checksum; `nil` when absent.
    public func get(_ key: String) throws(FixtureStoreError) -> [UInt8]? {
        guard let entry = table[key] else { return nil }
        return try read(entry, key: key)
    }

    /// Every key, sorted.
    public var keys: [String] { table.keys.sorted() }

    /// The store's fsck: one line per problem.
    public func check() -> [String] {
        var findings = openFindings
        var owner: [UInt32: String] = [:]
        for key in table.keys.sorted() {
            let entry = table[key]!
            for block in entry.blocks {
                guard Int(block) < Self.dataBlockCount else {
                    findings.append("key \(key): block \(block) outside the data device")
                    continue
                }
                if let other = owner[block] { findings.append("block \(block) owned by both \(other) and \(key)") }
                owner[block] = key
                if !allocated[Int(block)] { findings.append("key \(key): block \(block) is in use but free in the bitmap") }
            }
            do { _ = try read(entry, key: key) } catch { findings.append("key \(key) unreadable: \(error)") }
        }
        let pending = Set(pendingFree)
        for block in 0..<Self.dataBlockCount where allocated[block] && owner[UInt32(block)] == nil && !pending.contains(UInt32(block)) {
            findings.append("block \(block) leaked (allocated, owned by no key)")
        }
        return findings
    }

    // MARK: Internals

    private func enqueue(_ payload: [UInt8], onDurable: @escaping () -> Void) {
        batch.append(payload)
        if bugs.contains(.ackBeforeFlush) { onDurable() } else { waiting.append(onDurable) }
    }

    private func fireCallbacks() {
        let callbacks = waiting
        waiting = []
        for callback in callbacks { callback() }
    }

    private func allocate(_ count: Int) -> [UInt32]? {
        var result: [UInt32] = []
        for block in 0..<Self.dataBlockCount where !allocated[block] {
            result.append(UInt32(block))
            if result.count == count { break }
        }
        guard result.count == count else { return nil }
        for block in result { allocated[Int(block)] = true }
        return result
    }

    private func free(_ blocks: [UInt32]) {
        if bugs.contains(.reuseFreedBlockBeforeCheckpoint) {
            for block in blocks where Int(block) < Self.dataBlockCount { allocated[Int(block)] = false }
        } else {
            pendingFree += blocks
        }
    }

    private func read(_ entry: Entry, key: String) throws(FixtureStoreError) -> [UInt8] {
        var value: [UInt8]
        switch entry.location {
        case .inline(let bytes):
            value = bytes
        case .blocks(let blocks):
            value = []
            for block in blocks {
                guard Int(block) < Self.dataBlockCount else { throw .corrupt("key \(key): block \(block) out of range") }
                value += try readBlocks(from: data, block: UInt64(block), count: 1)
            }
            guard value.count >= entry.length else { throw .corrupt("key \(key): \(value.count) bytes for length \(entry.length)") }
            value.removeLast(value.count - entry.length)
        }
        guard value.count == entry.length, CRC32C.checksum(value) == entry.checksum else {
            throw .corrupt("key \(key): value checksum mismatch")
        }
        return value
    }

    /// Writes the table to the free checkpoint region, flushes, then the root with FUA.
    private func writeCheckpoint() throws(FixtureStoreError) {
        if dataDirty {
            try flush(data)
            dataDirty = false
        }
        var body = FixtureRecordWriter()
        body.u32(UInt32(table.count))
        var referenced = [Bool](repeating: false, count: Self.dataBlockCount)
        for key in table.keys.sorted() {
            body.string(key)
            Self.encode(table[key]!, into: &body)
            for block in table[key]!.blocks where Int(block) < Self.dataBlockCount { referenced[Int(block)] = true }
        }
        let newGeneration = max(generation, highestGenerationSeen) + 1
        let region = 1 - activeSlot
        let checkpointBytes = body.bytes
        guard checkpointBytes.count <= Self.checkpointRegionBlocks * Self.blockBytes else {
            throw .noSpace("checkpoint of \(checkpointBytes.count) bytes")
        }
        try write(Self.padded(checkpointBytes), to: meta,
                  at: Self.checkpointRegionFirstBlocks[region] * UInt64(Self.blockBytes), fua: false)
        try flush(meta)

        var root = [UInt8](repeating: 0, count: 2 * Self.blockBytes)
        var header = FixtureRecordWriter()
        header.u64(Self.rootMagic)
        header.u32(Self.version)
        header.u64(newGeneration)
        header.u32(UInt32(region))
        header.u32(UInt32(checkpointBytes.count))
        header.u32(CRC32C.checksum(checkpointBytes))
        header.u64(logNextSequence)
        root.replaceSubrange(0..<header.bytes.count, with: header.bytes)
        var trailer = FixtureRecordWriter()
        trailer.u64(newGeneration)
        for index in stride(from: 0, to: Self.dataBlockCount, by: 8) {
            var byte: UInt8 = 0
            for bit in 0..<8 where referenced[index + bit] { byte |= 1 << bit }
            trailer.u8(byte)
        }
        root.replaceSubrange(Self.blockBytes..<(Self.blockBytes + trailer.bytes.count), with: trailer.bytes)
        if !bugs.contains(.rootWithoutChecksum) {
            Self.store32(CRC32C.checksum(root), into: &root, at: Self.blockBytes - 4)
        }
        try write(root, to: meta, at: Self.rootSlotFirstBlocks[region] * UInt64(Self.blockBytes), fua: true)
        generation = newGeneration
        highestGenerationSeen = newGeneration
        activeSlot = region
    }

    private struct Root {
        let slot: Int
        let generation: UInt64
        let region: Int
        let checkpointBytes: Int
        let checkpointChecksum: UInt32
        let logSequenceStart: UInt64
        let trailerGeneration: UInt64
        let bitmap: [Bool]
    }

    private func readRoot(slot: Int) throws(FixtureStoreError) -> Root? {
        var bytes = try readBlocks(from: meta, block: Self.rootSlotFirstBlocks[slot], count: 2)
        var reader = FixtureRecordReader(bytes)
        guard let magic = reader.u64(), magic == Self.rootMagic, reader.u32() == Self.version,
              let generation = reader.u64() else { return nil }
        highestGenerationSeen = max(highestGenerationSeen, generation)
        guard let region = reader.u32(), region == slot,
              let checkpointBytes = reader.u32(), Int(checkpointBytes) <= Self.checkpointRegionBlocks * Self.blockBytes,
              let checkpointChecksum = reader.u32(), let logSequenceStart = reader.u64() else { return nil }
        if !bugs.contains(.rootWithoutChecksum) {
            let stored = Self.load32(bytes, at: Self.blockBytes - 4)
            Self.store32(0, into: &bytes, at: Self.blockBytes - 4)
            guard CRC32C.checksum(bytes) == stored else { return nil }
        }
        var trailer = FixtureRecordReader(Array(bytes[Self.blockBytes...]))
        let trailerGeneration = trailer.u64() ?? 0
        var bitmap: [Bool] = []
        for _ in 0..<(Self.dataBlockCount / 8) {
            let byte = trailer.u8() ?? 0
            for bit in 0..<8 { bitmap.append(byte & (1 << bit) != 0) }
        }
        return Root(slot: slot, generation: generation, region: Int(region), checkpointBytes: Int(checkpointBytes),
                    checkpointChecksum: checkpointChecksum, logSequenceStart: logSequenceStart,
                    trailerGeneration: trailerGeneration, bitmap: bitmap)
    }

    private func load() throws(FixtureStoreError) {
        let roots = [try readRoot(slot: 0), try readRoot(slot: 1)].compactMap { $0 }
        guard let root = roots.max(by: { $0.generation < $1.generation }) else { throw .noValidRoot }
        if root.trailerGeneration != root.generation {
            openFindings.append("root generation \(root.generation) has trailer generation \(root.trailerGeneration): torn root")
        }
        let blockCount = (root.checkpointBytes + Self.blockBytes - 1) / Self.blockBytes
        var body: [UInt8] = []
        if blockCount > 0 {
            body = try readBlocks(from: meta, block: Self.checkpointRegionFirstBlocks[root.region], count: blockCount)
            body.removeLast(body.count - root.checkpointBytes)
        }
        guard CRC32C.checksum(body) == root.checkpointChecksum else {
            throw .corrupt("checkpoint of generation \(root.generation) fails its checksum")
        }
        var reader = FixtureRecordReader(body)
        guard let count = reader.u32(), count <= Self.keyCountMax else { throw .corrupt("checkpoint table count") }
        var referenced = [Bool](repeating: false, count: Self.dataBlockCount)
        for _ in 0..<count {
            guard let key = reader.string(), let entry = Self.decodeEntry(&reader) else { throw .corrupt("checkpoint table entry") }
            table[key] = entry
            for block in entry.blocks where Int(block) < Self.dataBlockCount { referenced[Int(block)] = true }
        }
        if referenced != root.bitmap {
            let differing = (0..<Self.dataBlockCount).filter { referenced[$0] != root.bitmap[$0] }
            openFindings.append("root bitmap disagrees with the checkpoint table on blocks \(differing.prefix(8).map(String.init).joined(separator: ","))")
        }
        allocated = root.bitmap
        generation = root.generation
        activeSlot = root.slot
        try replay(from: root.logSequenceStart)
    }

    private func replay(from firstSequence: UInt64) throws(FixtureStoreError) {
        var block = Self.logFirstBlock
        var sequence = firstSequence
        replayedRecordCount = 0
        while block < Self.logEndBlock {
            let first = try readBlocks(from: meta, block: block, count: 1)
            var header = FixtureRecordReader(first)
            guard header.u32() == Self.logMagic, header.u64() == generation, header.u64() == sequence,
                  let blockCount = header.u32(), blockCount >= 1, UInt64(blockCount) <= Self.logEndBlock - block,
                  let payloadBytes = header.u32(), Int(payloadBytes) <= Int(blockCount) * Self.blockBytes - Self.logHeaderBytes,
                  let checksum = header.u32() else { break }
            var record = first
            if blockCount > 1 { record += try readBlocks(from: meta, block: block + 1, count: Int(blockCount) - 1) }
            record.removeLast(record.count - Self.logHeaderBytes - Int(payloadBytes))
            if !bugs.contains(.replayTornLogTail) {
                Self.store32(0, into: &record, at: Self.logHeaderBytes - 4)
                guard CRC32C.checksum(record) == checksum else { break }
            }
            var payload = FixtureRecordReader(Array(record[Self.logHeaderBytes...]))
            guard let kind = payload.u8(), let key = payload.string() else { break }
            if kind == 1 {
                guard let entry = Self.decodeEntry(&payload), entry.blocks.allSatisfy({ Int($0) < Self.dataBlockCount }) else { break }
                if let old = table[key] { pendingFree += old.blocks }
                for newBlock in entry.blocks { allocated[Int(newBlock)] = true }
                table[key] = entry
            } else if kind == 2 {
                if let old = table.removeValue(forKey: key) { pendingFree += old.blocks }
            } else {
                break
            }
            replayedRecordCount += 1
            block += UInt64(blockCount)
            sequence += 1
        }
        logNextBlock = block
        logNextSequence = sequence
    }

    private func encodeRecord(_ payload: [UInt8], sequence: UInt64) -> [UInt8] {
        let blockCount = (Self.logHeaderBytes + payload.count + Self.blockBytes - 1) / Self.blockBytes
        var header = FixtureRecordWriter()
        header.u32(Self.logMagic)
        header.u64(generation)
        header.u64(sequence)
        header.u32(UInt32(blockCount))
        header.u32(UInt32(payload.count))
        header.u32(0)
        var record = header.bytes + payload
        Self.store32(CRC32C.checksum(record), into: &record, at: Self.logHeaderBytes - 4)
        return Self.padded(record)
    }

    static func encode(_ entry: Entry, into writer: inout FixtureRecordWriter) {
        writer.u32(UInt32(entry.length))
        writer.u32(entry.checksum)
        switch entry.location {
        case .inline(let bytes):
            writer.u8(0)
            writer.append(bytes)
        case .blocks(let blocks):
            writer.u8(1)
            writer.u8(UInt8(blocks.count))
            for block in blocks { writer.u32(block) }
        }
    }

    static func decodeEntry(_ reader: inout FixtureRecordReader) -> Entry? {
        guard let length = reader.u32(), Int(length) <= valueBytesMax, let checksum = reader.u32(),
              let kind = reader.u8() else { return nil }
        if kind == 0 {
            guard let bytes = reader.bytes(Int(length)) else { return nil }
            return Entry(length: Int(length), checksum: checksum, location: .inline(bytes))
        }
        guard kind == 1, let count = reader.u8(), count <= 4 else { return nil }
        var blocks: [UInt32] = []
        for _ in 0..<count {
            guard let block = reader.u32() else { return nil }
            blocks.append(block)
        }
        return Entry(length: Int(length), checksum: checksum, location: .blocks(blocks))
    }

    // MARK: Device helpers

    static func padded(_ bytes: [UInt8]) -> [UInt8] {
        let size = max(blockBytes, (bytes.count + blockBytes - 1) / blockBytes * blockBytes)
        return bytes + [UInt8](repeating: 0, count: size - bytes.count)
    }

    static func store32(_ value: UInt32, into bytes: inout [UInt8], at offset: Int) {
        for index in 0..<4 { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
    }

    static func load32(_ bytes: [UInt8], at offset: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) }
    }

    private func write(_ bytes: [UInt8], to device: any BlockStorage, at offset: UInt64, fua: Bool) throws(FixtureStoreError) {
        precondition(bytes.count % Self.blockBytes == 0, "unpadded write of \(bytes.count) bytes")
        var failure: IOError? = nil
        bytes.withUnsafeBytes { buffer in
            do throws(IOError) { try device.write(buffer, at: offset, fua: fua) } catch { failure = error }
        }
        if let failure { throw .io(failure) }
    }

    private func writeBlock(_ bytes: [UInt8], to device: any BlockStorage, block: UInt64) throws(FixtureStoreError) {
        try write(bytes, to: device, at: block * UInt64(Self.blockBytes), fua: false)
    }

    private func flush(_ device: any BlockStorage) throws(FixtureStoreError) {
        do { try device.flush() } catch { throw .io(error) }
    }

    private func readBlocks(from device: any BlockStorage, block: UInt64, count: Int) throws(FixtureStoreError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count * Self.blockBytes)
        var failure: IOError? = nil
        bytes.withUnsafeMutableBytes { buffer in
            do throws(IOError) { try device.read(into: buffer, at: block * UInt64(Self.blockBytes)) } catch { failure = error }
        }
        if let failure { throw .io(failure) }
        return bytes
    }
}

/// Little-endian encoder for the fixture store's on-disk records.
struct FixtureRecordWriter {
    var bytes: [UInt8] = []

    mutating func u8(_ value: UInt8) { bytes.append(value) }
    mutating func u32(_ value: UInt32) { for index in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * index))) } }
    mutating func u64(_ value: UInt64) { for index in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: value >> (8 * index))) } }
    mutating func append(_ more: [UInt8]) { bytes += more }
    mutating func string(_ value: String) {
        let utf8 = Array(value.utf8)
        precondition(utf8.count <= 255, "string too long to encode")
        u8(UInt8(utf8.count))
        append(utf8)
    }
}

/// Bounds-checked little-endian decoder: every read returns `nil` past the end.
struct FixtureRecordReader {
    let bytes: [UInt8]
    var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func u8() -> UInt8? {
        guard position < bytes.count else { return nil }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u32() -> UInt32? {
        guard position + 4 <= bytes.count else { return nil }
        defer { position += 4 }
        return (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[position + $1]) << (8 * $1) }
    }

    mutating func u64() -> UInt64? {
        guard position + 8 <= bytes.count else { return nil }
        defer { position += 8 }
        return (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[position + $1]) << (8 * $1) }
    }

    mutating func bytes(_ count: Int) -> [UInt8]? {
        guard count >= 0, position + count <= bytes.count else { return nil }
        defer { position += count }
        return Array(bytes[position..<(position + count)])
    }

    mutating func string() -> String? {
        guard let length = u8(), let utf8 = bytes(Int(length)) else { return nil }
        return String(decoding: utf8, as: UTF8.self)
    }
}
