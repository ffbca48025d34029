// AlignedBufferPool tests: alignment and sizes, accounting, exhaustion and recovery, the
// whole-slab path after a split slab empties, configuration checks, and a seeded model-based
// run of random allocate/drop sequences checked against a page-occupancy model after every step.
//
// `IOBuffer` holds its pool `unowned(unsafe)`, so every test keeps its pool alive with
// `withExtendedLifetime` until the last buffer is dropped.

import StrataIO
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("AlignedBufferPool")
struct AlignedBufferPoolTests {
    static let slabBytes = AlignedBufferPool.slabBytes
    static let pageBytes = AlignedBufferPool.pageBytes

    static func roundedBytes(_ byteCount: Int) -> Int {
        (byteCount + pageBytes - 1) / pageBytes * pageBytes
    }

    /// Runs `body` with `count` empty slots for buffers (`IOBuffer` is noncopyable, so it cannot
    /// live in an Array) and keeps `pool` alive until every slot has been emptied afterwards.
    static func withSlots<Result>(_ count: Int, keeping pool: AlignedBufferPool,
                                  _ body: (UnsafeMutablePointer<IOBuffer?>) throws -> Result) rethrows -> Result {
        let slots = UnsafeMutablePointer<IOBuffer?>.allocate(capacity: count)
        for index in 0..<count { (slots + index).initialize(to: nil) }
        return try withExtendedLifetime(pool) {
            defer {
                for index in 0..<count { _ = slots[index].take() }
                slots.deinitialize(count: count)
                slots.deallocate()
            }
            return try body(slots)
        }
    }

    /// Where the buffer sits in the pool's region, in bytes, or nil when it is outside the region.
    static func regionOffset(_ buffer: borrowing IOBuffer, pool: AlignedBufferPool) -> Int? {
        let offset = pool.region.distance(to: buffer.baseAddress)
        return offset >= 0 && offset < pool.budgetBytes ? offset : nil
    }

    @Test("buffers are 4096-aligned, of the size asked for, inside their registered slab",
          arguments: [1, 100, 4095, 4096, 4097, 8192, 12_288, 65_536, 65_537, 300_000,
                      (1 << 20) - 4096, (1 << 20) - 1, 1 << 20])
    func alignmentAndSize(byteCount: Int) throws {
        let pool = try AlignedBufferPool(budgetBytes: 4 << 20)
        try withExtendedLifetime(pool) {
            // Allocate a 4 KiB buffer first so that the one under test does not sit at the region start.
            let first = try pool.allocate(byteCount: 4096)
            let buffer = try pool.allocate(byteCount: byteCount)
            #expect(UInt(bitPattern: buffer.baseAddress) % 4096 == 0)
            #expect(buffer.count == byteCount)
            #expect(buffer.bytes.count == byteCount)
            #expect(buffer.bytes.baseAddress == buffer.baseAddress)
            #expect(buffer.poolIdentifier == pool.identifier)
            let offsetInRegion = Self.regionOffset(buffer, pool: pool)
            let offset = try #require(offsetInRegion)
            // The buffer lies inside one slab, and that slab is the registered buffer it names.
            let rounded = Self.roundedBytes(byteCount)
            #expect(Int(buffer.slabIndex) == offset / Self.slabBytes)
            #expect((offset + rounded - 1) / Self.slabBytes == offset / Self.slabBytes, "buffer crosses a slab boundary")
            let iovec = pool.iovecs[Int(buffer.slabIndex)]
            let slabStart = try #require(iovec.iov_base)
            #expect(slabStart.distance(to: buffer.baseAddress) >= 0)
            #expect(slabStart.distance(to: buffer.baseAddress) + rounded <= iovec.iov_len)
            #expect(pool.bytesInUse == 4096 + rounded)
            #expect(pool.buffersInUse == 2)
            _ = consume first
            _ = consume buffer
            #expect(pool.bytesInUse == 0)
            #expect(pool.buffersInUse == 0)
        }
    }

    @Test("the registration table covers the region slab by slab")
    func iovecsCoverRegion() throws {
        let pool = try AlignedBufferPool(budgetBytes: 5 << 20)
        #expect(pool.slabCount == 5)
        #expect(UInt(bitPattern: pool.region) % 4096 == 0)
        for slab in 0..<pool.slabCount {
            #expect(pool.iovecs[slab].iov_base == pool.region + slab * Self.slabBytes)
            #expect(pool.iovecs[slab].iov_len == Self.slabBytes)
        }
        let other = try AlignedBufferPool(budgetBytes: 1 << 20)
        #expect(pool.identifier != 0 && other.identifier != 0)
        #expect(pool.identifier != other.identifier)
    }

    @Test("bad sizes are refused with badLength")
    func badSizes() throws {
        let pool = try AlignedBufferPool(budgetBytes: 2 << 20)
        try withExtendedLifetime(pool) {
            for (byteCount, reported) in [(0, UInt64(0)), (-1, 0), (-4096, 0), ((1 << 20) + 1, (1 << 20) + 1), (2 << 20, 2 << 20)] {
                TestSupport.expectIOError(.badLength(path: "buffer pool", length: reported, maximum: 1 << 20),
                                          mentioning: nil) { try pool.allocate(byteCount: byteCount) }
            }
            #expect(pool.bytesInUse == 0)
            #expect(pool.buffersInUse == 0)
            // Nothing leaked: the whole budget is still available as whole slabs.
            let a = try pool.allocate(byteCount: 1 << 20)
            let b = try pool.allocate(byteCount: 1 << 20)
            #expect(pool.bytesFree == 0)
            _ = consume a
            _ = consume b
        }
    }

    @Test("bytesInUse, buffersInUse and bytesFree follow allocations and drops")
    func accounting() throws {
        let budget = 4 << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        try withExtendedLifetime(pool) {
            #expect(pool.budgetBytes == budget)
            #expect(pool.bytesInUse == 0 && pool.bytesFree == budget && pool.buffersInUse == 0)
            let a = try pool.allocate(byteCount: 1)  // rounds to one page
            #expect(pool.bytesInUse == 4096 && pool.bytesFree == budget - 4096 && pool.buffersInUse == 1)
            let b = try pool.allocate(byteCount: 10_000)  // three pages
            #expect(pool.bytesInUse == 4096 + 12_288 && pool.buffersInUse == 2)
            let c = try pool.allocate(byteCount: 1 << 20)
            #expect(pool.bytesInUse == 4096 + 12_288 + (1 << 20) && pool.buffersInUse == 3)
            _ = consume b
            #expect(pool.bytesInUse == 4096 + (1 << 20) && pool.buffersInUse == 2)
            _ = consume c
            #expect(pool.bytesInUse == 4096 && pool.buffersInUse == 1)
            _ = consume a
            #expect(pool.bytesInUse == 0 && pool.bytesFree == budget && pool.buffersInUse == 0)
        }
    }

    @Test("whole slabs run out, then come back when a buffer drops")
    func exhaustionOfWholeSlabs() throws {
        let budget = 2 << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        try withExtendedLifetime(pool) {
            let a = try pool.allocate(byteCount: 1 << 20)
            var b: IOBuffer? = try pool.allocate(byteCount: 1 << 20)
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 1 << 20, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 1 << 20)
            }
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 4096, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 4096)
            }
            #expect(pool.bytesInUse == budget && pool.buffersInUse == 2)
            _ = b.take()
            let c = try pool.allocate(byteCount: 1 << 20)
            #expect(pool.bytesInUse == budget)
            _ = consume a
            _ = consume c
            #expect(pool.bytesInUse == 0)
        }
    }

    @Test("4 KiB pages run out, then come back when one drops")
    func exhaustionOfPages() throws {
        let budget = 2 << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        let pageCount = budget / Self.pageBytes
        try Self.withSlots(pageCount, keeping: pool) { slots in
            var seen = Set<UInt>()
            for index in 0..<pageCount {
                let buffer = try pool.allocate(byteCount: 4096)
                #expect(seen.insert(UInt(bitPattern: buffer.baseAddress)).inserted, "page handed out twice")
                slots[index] = consume buffer
            }
            #expect(pool.bytesInUse == budget && pool.bytesFree == 0)
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 4096, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 4096)
            }
            // Drop one page in the middle of the first slab: exactly that page is handed out again.
            let dropped = pageCount / 4 + 3
            _ = slots[dropped].take()
            let again = try pool.allocate(byteCount: 4096)
            #expect(again.baseAddress == pool.region + dropped * Self.pageBytes)
            slots[dropped] = consume again
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 100, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 100)
            }
        }
    }

    @Test("a multi-page request needs contiguous free pages in one slab")
    func fragmentation() throws {
        let budget = 1 << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        let pageCount = AlignedBufferPool.pagesPerSlab
        try Self.withSlots(pageCount, keeping: pool) { slots in
            for index in 0..<pageCount { slots[index] = try pool.allocate(byteCount: 4096) }
            // Free every other page: half the slab is free, but no two free pages touch.
            for index in stride(from: 0, to: pageCount, by: 2) { _ = slots[index].take() }
            #expect(pool.bytesFree == budget / 2)
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 8192, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 8192)
            }
            // Free page 101: pages 100...102 are now one free run of three.
            _ = slots[101].take()
            let run = try pool.allocate(byteCount: 3 * 4096)
            #expect(run.baseAddress == pool.region + 100 * Self.pageBytes)
            slots[101] = consume run
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 8192, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 8192)
            }
        }
    }

    @Test("a 1 MiB buffer is available again once every small piece of a slab is freed",
          arguments: [1, 2, 3])
    func wholeSlabAfterSmallPieces(slabCount: Int) throws {
        let budget = slabCount << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        let pieceCount = budget / Self.pageBytes
        try Self.withSlots(pieceCount, keeping: pool) { slots in
            // Fill every slab with small pieces of mixed sizes, so every slab is split.
            var used = 0
            var count = 0
            let sizes = [4096, 8192, 4096, 20_480, 4096, 12_288]
            while used < budget {
                let size = min(sizes[count % sizes.count], budget - used)
                slots[count] = try pool.allocate(byteCount: size)
                used += size
                count += 1
            }
            #expect(pool.bytesFree == 0)
            TestSupport.expectIOError(.bufferPoolExhausted(requestedBytes: 1 << 20, budgetBytes: budget), mentioning: nil) {
                try pool.allocate(byteCount: 1 << 20)
            }
            for index in 0..<count { _ = slots[index].take() }
            #expect(pool.bytesInUse == 0 && pool.buffersInUse == 0)
            // Every slab can now be handed out whole, including the one kept warm for small requests.
            for index in 0..<slabCount { slots[index] = try pool.allocate(byteCount: 1 << 20) }
            #expect(pool.bytesFree == 0)
            for index in 0..<slabCount { _ = slots[index].take() }
            // And small pieces again after that.
            for index in 0..<pieceCount { slots[index] = try pool.allocate(byteCount: 4096) }
            #expect(pool.bytesFree == 0)
        }
    }

    @Test("budgets that are not a multiple of 1 MiB in 1 MiB...16 GiB are refused",
          arguments: [0, -(1 << 20), 4096, (1 << 20) - 4096, (1 << 20) + 4096, (3 << 20) + 1,
                      AlignedBufferPool.budgetBytesMax + (1 << 20), Int.max])
    func invalidBudgets(budget: Int) {
        do throws(IOError) {
            _ = try AlignedBufferPool(budgetBytes: budget)
            Issue.record("budget \(budget) was accepted")
        } catch {
            guard case .invalidConfiguration(let name, let value, _) = error else {
                Issue.record("budget \(budget): expected invalidConfiguration, got \(error)")
                return
            }
            #expect(name == "bufferPoolBudgetBytes")
            #expect(value == "\(budget)")
            #expect(error.description.contains("\(budget)"))
        }
    }

    @Test("every byte of every buffer is writable, and writes stay inside their buffer")
    func memoryIsWritable() throws {
        let pool = try AlignedBufferPool(budgetBytes: 4 << 20)
        let sizes = [1 << 20, 4096, 1, 12_288, 65_536 + 17, (1 << 20) - 1, 300_000]
        try Self.withSlots(sizes.count, keeping: pool) { slots in
            var views: [UnsafeMutableRawBufferPointer] = []
            for (index, size) in sizes.enumerated() {
                let buffer = try pool.allocate(byteCount: size)
                views.append(buffer.bytes)
                slots[index] = consume buffer
            }
            for (index, view) in views.enumerated() { memset(view.baseAddress!, Int32(index + 1), view.count) }
            for (index, view) in views.enumerated() {
                let stray = view.firstIndex { $0 != UInt8(index + 1) }
                #expect(stray == nil, "buffer \(index) (\(view.count) bytes): byte \(stray ?? -1) was overwritten")
            }
        }
    }

    @Test("an unmanaged buffer belongs to no pool")
    func unmanagedBuffer() throws {
        try TestSupport.withAlignedMemory(byteCount: 8192) { memory in
            let pool = try AlignedBufferPool(budgetBytes: 1 << 20)
            try withExtendedLifetime(pool) {
                let inPool = try pool.allocate(byteCount: 4096)
                do {
                    let buffer = IOBuffer(unmanaged: memory)
                    #expect(buffer.baseAddress == memory.baseAddress)
                    #expect(buffer.count == 8192)
                    #expect(buffer.slabIndex == -1)
                    #expect(buffer.poolIdentifier == 0)
                }
                // Dropping the unmanaged buffer returned nothing to any pool.
                #expect(pool.bytesInUse == 4096 && pool.buffersInUse == 1)
                _ = consume inPool
            }
        }
    }

    // MARK: Model-based

    /// What the test knows about a live buffer, captured when it was handed out.
    struct LiveBuffer {
        var offset: Int  // from the region start
        var roundedBytes: Int
        var byteCount: Int
        var stamp: UInt64
    }

    /// Page occupancy as the model sees it: a buffer may be handed out iff some slab holds enough
    /// consecutive free pages (for a whole slab: a slab with no page in use).
    struct PageModel {
        var used: [Bool]
        init(slabCount: Int) { used = [Bool](repeating: false, count: slabCount * AlignedBufferPool.pagesPerSlab) }

        func canServe(pages: Int) -> Bool {
            let perSlab = AlignedBufferPool.pagesPerSlab
            for slab in 0..<(used.count / perSlab) {
                var run = 0
                for page in (slab * perSlab)..<((slab + 1) * perSlab) {
                    run = used[page] ? 0 : run + 1
                    if run >= pages { return true }
                }
            }
            return false
        }

        mutating func mark(_ buffer: LiveBuffer, used value: Bool) {
            let first = buffer.offset / AlignedBufferPool.pageBytes
            for page in first..<(first + buffer.roundedBytes / AlignedBufferPool.pageBytes) { used[page] = value }
        }
    }

    @Test("random allocate/drop sequences keep buffers disjoint, in the region and accounted",
          arguments: TestSupport.seeds(fixed: [1, 7, 42, 0xB10C]))
    func modelBased(seed: UInt64) throws {
        var random = TestSupport.SeededGenerator(seed: seed)
        let slabCount = 6
        let budget = slabCount << 20
        let pool = try AlignedBufferPool(budgetBytes: budget)
        let slotCount = 512
        var live = [LiveBuffer?](repeating: nil, count: slotCount)
        var model = PageModel(slabCount: slabCount)
        let steps = 4000
        var allocations = 0
        var exhaustions = 0
        var failed = false

        func fail(_ step: Int, _ message: String) {
            Issue.record("seed \(seed) (replay: STRATA_TEST_SEED=\(seed)) step \(step): \(message)")
            failed = true
        }

        /// Every live buffer's first and last 8 bytes carry its stamp: overlapping buffers
        /// would overwrite each other's stamps.
        func writeStamp(_ buffer: borrowing IOBuffer, _ stamp: UInt64) {
            if buffer.count >= 8 { buffer.baseAddress.storeBytes(of: stamp, as: UInt64.self) }
            if buffer.count >= 16 {
                (buffer.baseAddress + (buffer.count - 8)).storeBytes(of: ~stamp, toByteOffset: 0, as: UInt64.self)
            }
        }

        func checkInvariants(_ step: Int) {
            var ranges: [(start: Int, end: Int, slot: Int)] = []
            var sumBytes = 0
            for (slot, entry) in live.enumerated() {
                guard let entry else { continue }
                sumBytes += entry.roundedBytes
                ranges.append((entry.offset, entry.offset + entry.roundedBytes, slot))
                let address = pool.region + entry.offset
                if entry.byteCount >= 8, address.load(as: UInt64.self) != entry.stamp {
                    fail(step, "slot \(slot): stamp at the start was overwritten")
                }
                if entry.byteCount >= 16, address.loadUnaligned(fromByteOffset: entry.byteCount - 8, as: UInt64.self) != ~entry.stamp {
                    fail(step, "slot \(slot): stamp at the end was overwritten")
                }
            }
            ranges.sort { $0.start < $1.start }
            for (earlier, later) in zip(ranges, ranges.dropFirst()) where earlier.end > later.start {
                fail(step, "slots \(earlier.slot) [\(earlier.start), \(earlier.end)) and \(later.slot) [\(later.start), \(later.end)) overlap")
            }
            if pool.bytesInUse != sumBytes { fail(step, "bytesInUse \(pool.bytesInUse) != model \(sumBytes)") }
            if pool.buffersInUse != ranges.count { fail(step, "buffersInUse \(pool.buffersInUse) != model \(ranges.count)") }
            if pool.bytesFree != budget - sumBytes { fail(step, "bytesFree \(pool.bytesFree) != model \(budget - sumBytes)") }
        }

        Self.withSlots(slotCount, keeping: pool) { slots in
            for step in 0..<steps where !failed {
                let slot = Int.random(in: 0..<slotCount, using: &random)
                if live[slot] != nil {
                    // Occupied slot: drop its buffer.
                    model.mark(live[slot]!, used: false)
                    live[slot] = nil
                    _ = slots[slot].take()
                } else {
                    // Empty slot: allocate a buffer of a random size class.
                    let byteCount: Int
                    switch Int.random(in: 0..<100, using: &random) {
                    case 0..<45: byteCount = 4096
                    case 45..<65: byteCount = Int.random(in: 2...32, using: &random) * 4096
                    case 65..<75: byteCount = Int.random(in: 33...255, using: &random) * 4096
                    case 75..<85: byteCount = 1 << 20
                    default: byteCount = Int.random(in: 1...(1 << 20), using: &random)
                    }
                    let rounded = Self.roundedBytes(byteCount)
                    let expectSuccess = model.canServe(pages: rounded / Self.pageBytes)
                    do throws(IOError) {
                        let buffer = try pool.allocate(byteCount: byteCount)
                        allocations += 1
                        guard let offset = Self.regionOffset(buffer, pool: pool) else {
                            fail(step, "buffer of \(byteCount) bytes at \(buffer.baseAddress) is outside the region")
                            return
                        }
                        let entry = LiveBuffer(offset: offset, roundedBytes: rounded, byteCount: byteCount,
                                               stamp: random.next())
                        if !expectSuccess { fail(step, "\(byteCount) bytes handed out although no slab had room for it") }
                        if offset % 4096 != 0 { fail(step, "offset \(offset) is not page-aligned") }
                        if buffer.count != byteCount { fail(step, "count \(buffer.count) != \(byteCount)") }
                        if offset + rounded > budget { fail(step, "buffer [\(offset), \(offset + rounded)) ends past the region") }
                        if Int(buffer.slabIndex) != offset / Self.slabBytes || (offset + rounded - 1) / Self.slabBytes != offset / Self.slabBytes {
                            fail(step, "buffer [\(offset), \(offset + rounded)) is not inside its slab \(buffer.slabIndex)")
                        }
                        writeStamp(buffer, entry.stamp)
                        model.mark(entry, used: true)
                        live[slot] = entry
                        slots[slot] = consume buffer
                    } catch {
                        exhaustions += 1
                        if error != .bufferPoolExhausted(requestedBytes: byteCount, budgetBytes: budget) {
                            fail(step, "allocating \(byteCount) bytes threw \(error)")
                        } else if expectSuccess {
                            fail(step, "allocating \(byteCount) bytes was refused although a slab had room for it")
                        }
                    }
                }
                checkInvariants(step)
            }
            // Drop everything: the pool must be whole again.
            for slot in 0..<slotCount {
                live[slot] = nil
                _ = slots[slot].take()
            }
            if !failed {
                checkInvariants(steps)
                for index in 0..<slabCount {
                    do { slots[index] = try pool.allocate(byteCount: 1 << 20) } catch {
                        fail(steps, "slab \(index) of \(slabCount) not available whole after everything dropped: \(error)")
                    }
                }
            }
        }
        // The run must have exercised both outcomes, or it tested little.
        #expect(allocations > 500, "seed \(seed): only \(allocations) allocations")
        #expect(exhaustions > 10, "seed \(seed): only \(exhaustions) exhaustions")
    }
}
