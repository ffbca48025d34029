// AlignedBufferPool — page-aligned I/O buffers from a fixed budget, registered with the ring.
//
// Theory. O_DIRECT needs buffers aligned to the logical block size, and io_uring is fastest
// when the buffers are registered once (READ_FIXED/WRITE_FIXED: no page pinning per I/O). The
// pool maps its whole budget once (anonymous mmap, so registration is allowed) and carves it
// into 1 MiB slabs; slab i is registered as buffer index i. A data record (up to 1 MiB) takes a
// whole slab; smaller requests (4 KiB metadata blocks, or any multiple of 4 KiB below 1 MiB)
// take a contiguous run of 4 KiB pages inside a slab, tracked by a 256-bit bitmap per slab.
// A 4 KiB piece of slab i is still "registered buffer i": the kernel allows any address range
// inside a registered buffer.
//
// Ownership. `IOBuffer` is noncopyable: whoever holds it owns the memory. Submitting a buffer
// to an engine consumes it; the engine hands it back with the completion. So a buffer cannot be
// written by the program while the kernel reads it. Dropping an `IOBuffer` returns it to its
// pool (deinit), so there are no leaks by forgetting.
//
// Threading. A pool is confined to one thread, like the engine it is registered with (one ring
// per thread, DESIGN.md). No locks, and no allocation after `init`: the slab table, bitmaps and
// free stacks are fixed-size arrays made up front.
//
// Limits. `budgetBytes` (default 64 MiB) bounds the memory. RLIMIT_MEMLOCK bounds what may be
// registered (8 MiB for non-root here); when registration fails with ENOMEM the engine logs one
// line and runs with unregistered buffers from the same pool.

#if canImport(Glibc)
import Glibc
#endif
import CShims
import Synchronization

public struct IOBuffer: ~Copyable {
    public let baseAddress: UnsafeMutableRawPointer
    public let count: Int
    /// Slab index inside `pool` (the registered-buffer index), or -1 for caller-owned memory.
    public let slabIndex: Int32
    @usableFromInline let firstPage: Int16
    @usableFromInline let pageCount: Int16
    @usableFromInline unowned(unsafe) let pool: AlignedBufferPool?

    @inlinable
    init(baseAddress: UnsafeMutableRawPointer, count: Int, slabIndex: Int32, firstPage: Int16, pageCount: Int16,
         pool: AlignedBufferPool?) {
        self.baseAddress = baseAddress
        self.count = count
        self.slabIndex = slabIndex
        self.firstPage = firstPage
        self.pageCount = pageCount
        self.pool = pool
    }

    /// Wraps memory the caller owns and keeps alive until the I/O completes (no pool, never
    /// registered). The engine validates its alignment at submit.
    public init(unmanaged bytes: UnsafeMutableRawBufferPointer) {
        self.init(baseAddress: bytes.baseAddress!, count: bytes.count, slabIndex: -1, firstPage: 0, pageCount: 0,
                  pool: nil)
    }

    @inlinable public var bytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: baseAddress, count: count)
    }

    @inlinable public var poolIdentifier: UInt32 { pool?.identifier ?? 0 }

    deinit {
        if let pool { pool.giveBack(slabIndex: slabIndex, firstPage: firstPage, pageCount: pageCount) }
    }
}

public final class AlignedBufferPool {
    public static let slabBytes = 1 << 20
    public static let pageBytes = 4096
    public static let pagesPerSlab = slabBytes / pageBytes
    /// Default budget: 64 slabs of 1 MiB — QD32 of 1 MiB records, twice over.
    public static let budgetBytesDefault = 64 << 20
    public static let budgetBytesMax = 16 << 30

    private static let nextIdentifier = Atomic<UInt32>(0)

    public let budgetBytes: Int
    public let slabCount: Int
    public let identifier: UInt32
    public let region: UnsafeMutableRawPointer
    private let mapping: UnsafeMutableRawPointer
    private let mappingBytes: Int

    /// Slab state: -1 = whole slab free (on the free stack), -2 = whole slab in use,
    /// 0...256 = split into pages, that many free.
    @usableFromInline let slabFreePages: UnsafeMutablePointer<Int16>
    /// 4 words (256 bits) per slab; bit set = page free. Only meaningful for split slabs.
    @usableFromInline let bitmaps: UnsafeMutablePointer<UInt64>
    @usableFromInline let freeSlabs: UnsafeMutablePointer<Int32>
    @usableFromInline var freeSlabCount: Int
    /// A split slab that still has free pages: tried first for small requests.
    @usableFromInline var currentSplitSlab: Int32 = -1
    @usableFromInline var inUseBytes: Int = 0
    @usableFromInline var inUseBuffers: Int = 0
    public var bytesInUse: Int { inUseBytes }
    public var buffersInUse: Int { inUseBuffers }
    /// io_uring_register_buffers input: one iovec per slab (allocated memory: the kernel reads it).
    public let iovecs: UnsafeMutablePointer<iovec>

    public init(budgetBytes: Int = AlignedBufferPool.budgetBytesDefault) throws(IOError) {
        guard budgetBytes >= AlignedBufferPool.slabBytes, budgetBytes <= AlignedBufferPool.budgetBytesMax,
              budgetBytes % AlignedBufferPool.slabBytes == 0 else {
            throw .invalidConfiguration(name: "bufferPoolBudgetBytes", value: "\(budgetBytes)",
                                        reason: "must be a multiple of 1 MiB in 1 MiB...16 GiB")
        }
        // Map 2 MiB more than the budget and start the region at a 2 MiB boundary so huge
        // pages can back it.
        let hugePageBytes = 2 << 20
        let mappingBytes = budgetBytes + hugePageBytes
        let mapping = mmap(nil, mappingBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let mapping, mapping != MAP_FAILED else {
            throw .bufferPoolExhausted(requestedBytes: budgetBytes, budgetBytes: budgetBytes)
        }
        let misalignment = Int(bitPattern: mapping) % hugePageBytes
        let mapped = mapping + (misalignment == 0 ? 0 : hugePageBytes - misalignment)
        self.mapping = mapping
        self.mappingBytes = mappingBytes
        self.budgetBytes = budgetBytes
        self.slabCount = budgetBytes / AlignedBufferPool.slabBytes
        self.region = mapped
        // Identifiers start at 1 (0 = no pool).
        self.identifier = AlignedBufferPool.nextIdentifier.add(1, ordering: .relaxed).newValue
        slabFreePages = .allocate(capacity: slabCount)
        bitmaps = .allocate(capacity: slabCount * 4)
        freeSlabs = .allocate(capacity: slabCount)
        iovecs = .allocate(capacity: slabCount)
        freeSlabCount = slabCount
        for slab in 0..<slabCount {
            slabFreePages[slab] = -1
            // Stack: pop from the end, so slab 0 is handed out first.
            freeSlabs[slab] = Int32(slabCount - 1 - slab)
            iovecs[slab] = iovec(iov_base: mapped + slab * AlignedBufferPool.slabBytes,
                                 iov_len: AlignedBufferPool.slabBytes)
        }
        bitmaps.initialize(repeating: 0, count: slabCount * 4)
        // Ask for transparent huge pages (system setting "madvise" here): with 4 KiB pages the
        // kernel maps and pins 256 pages per 1 MiB O_DIRECT request; with 2 MiB pages, one.
        // perf/ measured 1 MiB reads at ~1.0 GiB/s on 4 KiB pages and 3.1–3.4 GiB/s on huge
        // pages. Advisory: failure (no THP) leaves ordinary pages.
        _ = madvise(mapped, budgetBytes, MADV_HUGEPAGE)
        // Touch every page now so the first I/O does not fault (warm-up, not the hot path).
        memset(mapped, 0, budgetBytes)
    }

    deinit {
        precondition(buffersInUse == 0, "AlignedBufferPool destroyed with \(buffersInUse) buffers outstanding")
        munmap(mapping, mappingBytes)
        slabFreePages.deallocate()
        bitmaps.deallocate()
        freeSlabs.deallocate()
        iovecs.deallocate()
    }

    /// Total bytes not handed out.
    public var bytesFree: Int { budgetBytes - bytesInUse }

    /// A buffer of `byteCount` bytes (rounded up to 4 KiB; at most 1 MiB), or throws
    /// `bufferPoolExhausted`. O(1) for 1 MiB and 4 KiB in the common case.
    @inlinable
    public func allocate(byteCount: Int) throws(IOError) -> IOBuffer {
        guard byteCount > 0, byteCount <= AlignedBufferPool.slabBytes else {
            throw .badLength(path: "buffer pool", length: UInt64(max(byteCount, 0)), maximum: UInt64(AlignedBufferPool.slabBytes))
        }
        let pages = (byteCount + AlignedBufferPool.pageBytes - 1) / AlignedBufferPool.pageBytes
        if pages == AlignedBufferPool.pagesPerSlab {
            guard let slab = popFreeSlab() else { throw .bufferPoolExhausted(requestedBytes: byteCount, budgetBytes: budgetBytes) }
            slabFreePages[Int(slab)] = -2
            return finish(slab: slab, firstPage: 0, pages: pages, byteCount: byteCount)
        }
        if currentSplitSlab >= 0, let first = takeRun(slab: currentSplitSlab, pages: pages) {
            return finish(slab: currentSplitSlab, firstPage: first, pages: pages, byteCount: byteCount)
        }
        return try allocateSlow(pages: pages, byteCount: byteCount)
    }

    @usableFromInline
    func allocateSlow(pages: Int, byteCount: Int) throws(IOError) -> IOBuffer {
        for slab in 0..<Int32(slabCount) where slabFreePages[Int(slab)] >= Int16(pages) {
            if let first = takeRun(slab: slab, pages: pages) {
                currentSplitSlab = slab
                return finish(slab: slab, firstPage: first, pages: pages, byteCount: byteCount)
            }
        }
        guard let slab = popFreeSlab() else { throw .bufferPoolExhausted(requestedBytes: byteCount, budgetBytes: budgetBytes) }
        slabFreePages[Int(slab)] = Int16(AlignedBufferPool.pagesPerSlab)
        for word in 0..<4 { bitmaps[Int(slab) * 4 + word] = ~0 }
        currentSplitSlab = slab
        let first = takeRun(slab: slab, pages: pages)
        precondition(first == 0, "a fresh split slab serves any run from page 0")
        return finish(slab: slab, firstPage: 0, pages: pages, byteCount: byteCount)
    }

    @inlinable
    func popFreeSlab() -> Int32? {
        if freeSlabCount == 0, currentSplitSlab >= 0,
           Int(slabFreePages[Int(currentSplitSlab)]) == AlignedBufferPool.pagesPerSlab {
            // The kept-warm split slab is entirely free: give it back for whole-slab use.
            let slab = currentSplitSlab
            currentSplitSlab = -1
            pushFreeSlab(slab)
        }
        guard freeSlabCount > 0 else { return nil }
        freeSlabCount -= 1
        let slab = freeSlabs[freeSlabCount]
        precondition(slabFreePages[Int(slab)] == -1, "slab on the free stack must be whole and free")
        return slab
    }

    /// Finds and claims `pages` consecutive free pages in a split slab.
    @inlinable
    func takeRun(slab: Int32, pages: Int) -> Int16? {
        let free = slabFreePages[Int(slab)]
        guard free >= Int16(pages) else { return nil }
        let words = bitmaps + Int(slab) * 4
        if pages == 1 {
            for w in 0..<4 where words[w] != 0 {
                let bit = words[w].trailingZeroBitCount
                words[w] &= ~(1 << UInt64(bit))
                slabFreePages[Int(slab)] = free - 1
                return Int16(w * 64 + bit)
            }
            preconditionFailure("free page count \(free) disagrees with the bitmap of slab \(slab)")
        }
        var runStart = 0
        var runLength = 0
        for page in 0..<AlignedBufferPool.pagesPerSlab {
            if words[page >> 6] & (1 << UInt64(page & 63)) != 0 {
                if runLength == 0 { runStart = page }
                runLength += 1
                if runLength == pages {
                    for p in runStart..<(runStart + pages) { words[p >> 6] &= ~(1 << UInt64(p & 63)) }
                    slabFreePages[Int(slab)] = free - Int16(pages)
                    return Int16(runStart)
                }
            } else {
                runLength = 0
            }
        }
        return nil
    }

    @inlinable
    func finish(slab: Int32, firstPage: Int16, pages: Int, byteCount: Int) -> IOBuffer {
        inUseBytes += pages * AlignedBufferPool.pageBytes
        inUseBuffers += 1
        let address = region + Int(slab) * AlignedBufferPool.slabBytes + Int(firstPage) * AlignedBufferPool.pageBytes
        return IOBuffer(baseAddress: address, count: byteCount,
                        slabIndex: slab, firstPage: firstPage, pageCount: Int16(pages), pool: self)
    }

    @usableFromInline
    func giveBack(slabIndex slab: Int32, firstPage: Int16, pageCount: Int16) {
        precondition(slab >= 0 && Int(slab) < slabCount, "buffer from another pool")
        inUseBytes -= Int(pageCount) * AlignedBufferPool.pageBytes
        inUseBuffers -= 1
        precondition(inUseBytes >= 0 && inUseBuffers >= 0, "buffer returned twice")
        let state = slabFreePages[Int(slab)]
        if state == -2 {
            precondition(Int(pageCount) == AlignedBufferPool.pagesPerSlab, "whole-slab buffer with a partial page count")
            pushFreeSlab(slab)
            return
        }
        precondition(state >= 0, "returning pages to a free slab")
        let words = bitmaps + Int(slab) * 4
        for p in Int(firstPage)..<(Int(firstPage) + Int(pageCount)) {
            let mask: UInt64 = 1 << UInt64(p & 63)
            precondition(words[p >> 6] & mask == 0, "page \(p) of slab \(slab) returned twice")
            words[p >> 6] |= mask
        }
        let free = state + pageCount
        if Int(free) == AlignedBufferPool.pagesPerSlab && slab != currentSplitSlab {
            pushFreeSlab(slab)
        } else {
            slabFreePages[Int(slab)] = free
        }
    }

    @inlinable
    func pushFreeSlab(_ slab: Int32) {
        slabFreePages[Int(slab)] = -1
        freeSlabs[freeSlabCount] = slab
        freeSlabCount += 1
    }
}
