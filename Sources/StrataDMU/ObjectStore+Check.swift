// ObjectStore+Check — the full consistency check (`strata pool check`): the fsck of the crash
// contract.
//
// Theory. The check runs on a pool imported read-only, before anything replays, so the
// allocator holds exactly the durable space maps of the newest checkpoint. It walks everything
// that checkpoint references — the dnode table tree and its blocks, every dnode's extent-map
// tree and data extents, xattr block and index tree, the log head and the segments it lists — and
// reads every metadata block through its checksummed pointer (so every metadata checksum is
// verified, and with `verifyData` every data chunk too). Each referenced 4 KiB unit is marked in a
// per-device bitmap: a unit marked twice is doubly owned. A metadata block with two copies (the
// pool's `copies.metadata` = 2) has both copies marked, and each copy is read and verified on
// its own: the walk reads through the store, which falls back to copy 1 when copy 0 is bad and
// so would hide it; a bad copy is a problem even when the other is good. Then the marks are compared with the
// durable view of the space maps: a referenced unit the maps call free is a use-after-free
// waiting to happen, an allocated unit nothing references is a leak. Segments named only by log
// blocks written after the checkpoint are the log's (open claims them) and are excluded from both
// comparisons. Last, the store is opened read-only, which replays the log through the apply
// functions: the log is replayable, whole.
// Structural checks ride along: index trees ordered and balanced (`IndexTree.verify`), extent
// maps well formed (`ExtentMap.verify`), dnodes in the right slot, object numbers below the
// recorded next object number.

import StrataIO
import StrataLog
import StrataPool

/// The result of `ObjectStore.check`.
public struct StoreCheckReport: Sendable, Equatable, Codable {
    public var checkpoint: UInt64 = 0
    public var objects = 0
    public var regularObjects = 0
    public var indexObjects = 0
    public var indexEntries = 0
    public var metadataBlocks = 0
    public var dataExtents = 0
    public var dataBytes: UInt64 = 0
    public var dataBytesVerified: UInt64 = 0
    public var logRecords = 0
    public var logSegments = 0
    public var referencedBytes: UInt64 = 0
    public var allocatedBytes: UInt64 = 0
    /// Every problem found, each naming what and where; empty when the pool is consistent.
    public var problems: [String] = []
    public var isClean: Bool { problems.isEmpty }
    /// More problems than this are counted, not listed.
    public static let problemsListedMax = 100
    public var problemCount = 0

    mutating func problem(_ text: String) {
        problemCount += 1
        if problems.count < Self.problemsListedMax { problems.append(text) }
    }
}

extension ObjectStore {
    /// Checks the pool's newest checkpoint and log (see the theory). `pool` must be imported
    /// read-only and untouched since import.
    public static func check(pool: Pool, verifyData: Bool = false, settings: ObjectStoreSettings = ObjectStoreSettings()) -> StoreCheckReport {
        precondition(pool.isReadOnly, "check needs a pool imported read-only")
        let checker = Checker(pool: pool)
        let uberblock = pool.uberblock
        checker.report.checkpoint = uberblock.checkpoint
        let store = StagedMetadataStore(pool: pool)
        let cache = IndexNodeCache(budgetBytes: 16 << 20)

        // The pool's own areas (labels, space maps) and the tail past the last whole unit.
        for device in pool.allocator.devices {
            for range in device.reservedRanges { checker.marks.mark(deviceIndex: device.index, range: range, owner: "pool labels and space maps", report: &checker.report, checkDouble: false) }
        }


        // The dnode table.
        let tableRoot = uberblock.roots[Uberblock.RootSlot.dnodeTable.rawValue]
        var nextObject: UInt64 = 1
        if !tableRoot.isNull {
            do {
                let table = try IndexTree(root: tableRoot, store: store, name: "dnode table", cache: cache)
                let tableCheck = table.verify()
                for problem in tableCheck.problems { checker.report.problem("dnode table: \(problem)") }
                for pointer in tableCheck.blockPointers { checker.reference(pointer, "dnode table node") }
                if let meta = try table.lookup(metaKey), meta.count == 16 {
                    nextObject = meta.withUnsafeBytes { ByteReader($0).get(UInt64.self, at: 8) }
                } else {
                    checker.report.problem("dnode table: no valid meta entry")
                }
                var position = IndexPosition.first
                while true {
                    let batch = try table.entries(from: position, limit: 256)
                    for entry in batch.entries where entry.key != metaKey {
                        checkTableBlock(entry, store: store, cache: cache, nextObject: nextObject, verifyData: verifyData,
                                        pool: pool, checker: checker)
                    }
                    guard !batch.reachedEnd, let cookie = batch.cookie else { break }
                    position = .after(cookie)
                }
            } catch {
                checker.report.problem("dnode table at \(tableRoot.offsetBytes) on device \(tableRoot.deviceIndex): \(error)")
            }
        }

        // The log.
        let logRoot = uberblock.roots[Uberblock.RootSlot.intentLog.rawValue]
        if !logRoot.isNull {
            do {
                let space = try IntentLog.ownedSpace(pool: pool, root: logRoot)
                for extent in space.durable { checker.marks.mark(deviceIndex: extent.deviceIndex, range: extent.offsetBytes ..< extent.endBytes, owner: "intent log", report: &checker.report) }
                for extent in space.claimedAfterCheckpoint { checker.marks.exclude(deviceIndex: extent.deviceIndex, range: extent.offsetBytes ..< extent.endBytes) }
                checker.report.logSegments = space.summary.segmentCount
                checker.report.logRecords = space.summary.recordCount
            } catch {
                checker.report.problem("intent log head at \(logRoot.offsetBytes) on device \(logRoot.deviceIndex): \(error)")
            }
        }

        // References against the durable space maps.
        checker.marks.compare(with: pool.allocator, report: &checker.report)

        // The log replays, whole, through the apply functions (in memory: the pool is read-only).
        var replaySettings = settings
        replaySettings.backgroundCheckpoints = false
        do {
            _ = try ObjectStore.open(pool: pool, settings: replaySettings)
        } catch {
            checker.report.problem("replay: \(error)")
        }
        return checker.report
    }

    private static func checkTableBlock(_ entry: IndexEntry, store: StagedMetadataStore, cache: IndexNodeCache, nextObject: UInt64,
                                        verifyData: Bool, pool: Pool, checker: Checker) {
        func reference(_ pointer: BlockPointer, _ owner: String) { checker.reference(pointer, owner) }
        guard entry.key.count == 8 else {
            checker.report.problem("dnode table: key of \(entry.key.count) bytes")
            return
        }
        let blockIndex = entry.key.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let slots: [Dnode?]
        do {
            let pointer = try decodePointer(entry.value, what: "dnode table block \(blockIndex)")
            reference(pointer, "dnode table block \(blockIndex)")
            let buffer = allocateAlignedBuffer(byteCount: DnodeTableBlock.blockBytes)
            defer { buffer.deallocate() }
            try store.read(pointer, into: buffer)
            slots = try DnodeTableBlock.decode(UnsafeRawBufferPointer(buffer), blockIndex: blockIndex)
        } catch {
            checker.report.problem("dnode table block \(blockIndex): \(error)")
            return
        }
        if slots.allSatisfy({ $0 == nil }) { checker.report.problem("dnode table block \(blockIndex) holds no dnode") }
        for case var dnode? in slots {
            let object = dnode.objectNumber
            checker.report.objects += 1
            if object >= nextObject { checker.report.problem("object \(object) at or past the next object number \(nextObject)") }
            if !dnode.systemAttributes.overflowBlock.isNull {
                reference(dnode.systemAttributes.overflowBlock, "object \(object) xattr block")
                do { _ = try dnode.xattrNames(store: store) } catch { checker.report.problem("object \(object) xattrs: \(error)") }
            }
            switch dnode.type {
            case .index, .directory:
                checker.report.indexObjects += 1
                switch dnode.extentMap {
                case .tree(let root):
                    do {
                        let tree = try IndexTree(root: root, store: store, name: "object \(object)", cache: cache)
                        let check = tree.verify()
                        for problem in check.problems { checker.report.problem("object \(object) index: \(problem)") }
                        for pointer in check.blockPointers { reference(pointer, "object \(object) index node") }
                        checker.report.indexEntries += check.entryCount
                    } catch {
                        checker.report.problem("object \(object) index root: \(error)")
                    }
                case .inline(let bytes):
                    if !bytes.isEmpty { checker.report.problem("object \(object): index object with inline extent bytes") }
                }
            case .regular, .symlink, .node:
                checker.report.regularObjects += 1
                do {
                    let map = try ExtentMap.load(object: object, root: dnode.extentMap, store: store)
                    let references = map.references
                    for pointer in references.metadataBlocks { reference(pointer, "object \(object) extent map") }
                    for extent in map.extents {
                        checker.report.dataExtents += 1
                        checker.report.dataBytes += extent.lengthBytes
                        for copy in extent.copies {
                            checker.marks.mark(deviceIndex: copy.deviceIndex, range: copy.offsetBytes ..< copy.endBytes,
                                       owner: "object \(object) data at \(extent.logicalOffsetBytes)", report: &checker.report)
                        }
                        if extent.logicalEndBytes > roundUp(dnode.sizeBytes) {
                            checker.report.problem("object \(object): extent \(extent.logicalRange) past its size \(dnode.sizeBytes)")
                        }
                        if verifyData {
                            let span = extent.chunkSpan(covering: extent.logicalRange)
                            let buffer = allocateAlignedBuffer(byteCount: Int(extent.lengthBytes))
                            defer { buffer.deallocate() }
                            for copy in extent.copies {
                                do {
                                    try pool.devices[copy.deviceIndex].read(into: buffer, at: copy.offsetBytes)
                                    try extent.verify(UnsafeRawBufferPointer(buffer), span: span, object: object)
                                    checker.report.dataBytesVerified += extent.lengthBytes
                                } catch {
                                    checker.report.problem("object \(object) data copy on device \(copy.deviceIndex) at \(copy.offsetBytes): \(error)")
                                }
                            }
                        }
                    }
                } catch {
                    checker.report.problem("object \(object) extent map: \(error)")
                }
            case .free:
                checker.report.problem("object \(object): a dnode of type free")
            }
        }
    }
}

/// The check's running state (a class, so the helpers share it without overlapping inout access).
final class Checker {
    var report = StoreCheckReport()
    var marks: UnitMarks
    /// Reads single copies of multi-copy blocks.
    let copies: PoolMetadataStore

    init(pool: Pool) {
        marks = UnitMarks(pool: pool)
        copies = PoolMetadataStore(pool: pool)
    }

    /// The longest metadata block (extent-map blocks, the largest, are at most 1 MiB): a longer
    /// pointer is corrupt, and its copies are not read.
    static let metadataBlockBytesMax: UInt64 = 1 << 20

    /// A metadata block the checkpoint references: every copy marked once; with several copies,
    /// every copy read and verified alone (a single copy is verified by the walk's read).
    func reference(_ pointer: BlockPointer, _ owner: String) {
        report.metadataBlocks += 1
        if let problem = pointer.formatProblem {
            report.problem("\(owner): \(problem)")
            return
        }
        let copyCount = pointer.copyCount
        for copy in 0 ..< copyCount {
            let place = pointer.address(ofCopy: copy)
            let name = copyCount == 1 ? owner : "\(owner) (copy \(copy) of \(copyCount))"
            let (end, overflow) = place.offsetBytes.addingReportingOverflow(pointer.lengthBytes)
            guard !overflow else {
                report.problem("\(name): \(pointer.lengthBytes) bytes at \(place) run past 2^64")
                continue
            }
            marks.mark(deviceIndex: place.deviceIndex, range: place.offsetBytes ..< end, owner: name, report: &report)
        }
        guard copyCount > 1 else { return }
        guard pointer.lengthBytes > 0, pointer.lengthBytes <= Self.metadataBlockBytesMax else {
            report.problem("\(owner): a metadata block of \(pointer.lengthBytes) bytes (at most \(Self.metadataBlockBytesMax))")
            return
        }
        let buffer = allocateAlignedBuffer(byteCount: Int(pointer.lengthBytes))
        defer { buffer.deallocate() }
        for copy in 0 ..< copyCount {
            do {
                try copies.readCopy(pointer, copy: copy, into: buffer)
            } catch {
                report.problem("\(owner): copy \(copy) of \(copyCount) at \(pointer.address(ofCopy: copy)) is bad: \(error)")
            }
        }
    }
}

/// One bit per 4 KiB unit of every device: referenced by the checkpoint; plus units excluded
/// from the comparison (the log's post-checkpoint segments).
struct UnitMarks {
    var referenced: [[UInt64]]
    var excluded: [[UInt64]]
    let unitCounts: [Int]

    init(pool: Pool) {
        unitCounts = pool.allocator.devices.map { Int($0.sizeBytes / 4096) }
        referenced = unitCounts.map { [UInt64](repeating: 0, count: ($0 + 63) / 64 + 1) }
        excluded = referenced
    }

    private static func units(_ range: Range<UInt64>) -> Range<Int> {
        Int(range.lowerBound / 4096) ..< Int((range.upperBound + 4095) / 4096)
    }

    mutating func mark(deviceIndex: Int, range: Range<UInt64>, owner: String, report: inout StoreCheckReport, checkDouble: Bool = true) {
        guard deviceIndex >= 0, deviceIndex < unitCounts.count else {
            report.problem("\(owner): device \(deviceIndex) is not in the pool")
            return
        }
        let units = Self.units(range).clamped(to: 0 ..< unitCounts[deviceIndex])
        if units.count < Self.units(range).count {
            report.problem("\(owner): \(range) on device \(deviceIndex) is past the device's end")
        }
        var doubled = 0
        for unit in units {
            let bit = UInt64(1) << UInt64(unit & 63)
            if referenced[deviceIndex][unit >> 6] & bit != 0 { doubled += 1 }
            referenced[deviceIndex][unit >> 6] |= bit
        }
        if doubled > 0 && checkDouble {
            report.problem("\(owner): \(doubled) of its 4 KiB units on device \(deviceIndex) at \(range.lowerBound) are referenced twice")
        }
        report.referencedBytes += UInt64(units.count) * 4096
    }

    mutating func exclude(deviceIndex: Int, range: Range<UInt64>) {
        guard deviceIndex >= 0, deviceIndex < unitCounts.count else { return }
        for unit in Self.units(range).clamped(to: 0 ..< unitCounts[deviceIndex]) {
            excluded[deviceIndex][unit >> 6] |= UInt64(1) << UInt64(unit & 63)
        }
    }

    func compare(with allocator: PoolAllocator, report: inout StoreCheckReport) {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SpaceMap.bitmapBlockBytes, alignment: 8)
        defer { buffer.deallocate() }
        for device in allocator.devices {
            let index = device.index
            var leakRuns = 0, leakedUnits = 0, freeRuns = 0, freeUnits = 0
            var firstLeak: Int? = nil, firstFree: Int? = nil
            var previousLeak = false, previousFree = false
            for block in 0 ..< allocator.spaceMapBlockCount(deviceIndex: index) {
                allocator.encodeSpaceMapBlock(deviceIndex: index, blockIndex: block, into: buffer)
                for word in 0 ..< SpaceMap.bitmapBlockBytes / 8 {
                    let unitBase = (block * SpaceMap.bitmapBlockBytes / 8 + word) * 64
                    guard unitBase < unitCounts[index] else { break }
                    let allocated = buffer.load(fromByteOffset: word * 8, as: UInt64.self).littleEndian
                    let wordIndex = unitBase >> 6
                    let referencedWord = referenced[index][wordIndex]
                    let excludedWord = excluded[index][wordIndex]
                    let validBits = unitCounts[index] - unitBase >= 64 ? UInt64.max : (UInt64(1) << UInt64(unitCounts[index] - unitBase)) - 1
                    let leaked = allocated & ~referencedWord & ~excludedWord & validBits
                    let unallocated = referencedWord & ~allocated & ~excludedWord & validBits
                    report.allocatedBytes += UInt64((allocated & validBits).nonzeroBitCount) * 4096
                    if leaked == 0 && unallocated == 0 {
                        previousLeak = false
                        previousFree = false
                        continue
                    }
                    for bit in 0..<64 {
                        let mask = UInt64(1) << UInt64(bit)
                        let isLeak = leaked & mask != 0, isFree = unallocated & mask != 0
                        if isLeak {
                            leakedUnits += 1
                            if !previousLeak { leakRuns += 1 }
                            if firstLeak == nil { firstLeak = unitBase + bit }
                        }
                        if isFree {
                            freeUnits += 1
                            if !previousFree { freeRuns += 1 }
                            if firstFree == nil { firstFree = unitBase + bit }
                        }
                        previousLeak = isLeak
                        previousFree = isFree
                    }
                }
            }
            if let firstLeak {
                report.problem("device \(index) (\(device.path)): \(leakedUnits) allocated 4 KiB units in \(leakRuns) runs are referenced by nothing (leaked), the first at offset \(UInt64(firstLeak) * 4096)")
            }
            if let firstFree {
                report.problem("device \(index) (\(device.path)): \(freeUnits) referenced 4 KiB units in \(freeRuns) runs are free in the space map, the first at offset \(UInt64(firstFree) * 4096)")
            }
        }
    }
}
