// PayloadArena — where a CrashRecorder keeps the bytes of recorded writes.
//
// Theory. Copying each write into its own freshly allocated array costs an allocation per
// write, and for large writes (a 1 MiB data stream) a fresh mmap whose 4 KiB pages are faulted
// and zeroed by the kernel one at a time as the copy touches them: the copy then runs at a
// fraction of memcpy speed. The arena instead bump-allocates payloads out of large chunks
// (1 MiB, doubling up to 64 MiB, each allocated once, never zero-filled by us); chunks of
// 2 MiB and more are 2 MiB-aligned and advised for transparent huge pages, so the kernel
// faults them in 2 MiB at a time. A write is one reservation (under the recorder's lock) and
// one memcpy (outside it).
//
// Memory stays bounded by the session's budget: a reservation is only made for a write the
// budget admitted, chunks are never larger than the budget (rounded up to 2 MiB) unless one
// write needs more, and the unused tail of a chunk is never touched, so it costs address
// space, not memory (at most one partly used huge page per chunk).
//
// Invariants: a reserved range is written exactly once, by the thread that reserved it, before
// the write is published (appended to the recorder's state under its lock); after that it is
// only read. A chunk is freed when the last `RecordedWrite` referring to it (and the recorder,
// while it is the current chunk) is gone.

#if canImport(Glibc)
import Glibc
#endif

/// One arena chunk: raw memory owned by the recorded writes that live in it.
final class PayloadChunk: @unchecked Sendable {
    // @unchecked: the memory is written only in ranges reserved under the recorder's lock,
    // each by one thread before publication, and only read afterwards (see PayloadArena).
    let base: UnsafeMutableRawPointer
    let capacity: Int

    init(capacity: Int) {
        let hugePage = PayloadArena.hugePageBytes
        let alignment = capacity >= hugePage ? hugePage : 64
        self.base = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: alignment)
        self.capacity = capacity
        #if canImport(Glibc)
        if capacity >= hugePage {
            // Best effort: without THP the chunk is faulted 4 KiB at a time, as before.
            _ = madvise(base, capacity / hugePage * hugePage, MADV_HUGEPAGE)
        }
        #endif
    }

    deinit { base.deallocate() }
}

/// The bytes of one recorded write: a range of a chunk.
struct PayloadBytes: Sendable {
    let chunk: PayloadChunk
    let offset: Int
    let count: Int

    /// Calls `body` with the bytes (valid only inside `body`).
    func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: chunk.base + offset, count: count))
    }

    /// A copy as an array.
    var array: [UInt8] { withBytes { [UInt8]($0) } }
}

/// The bump allocator. Lives in the recorder's locked state.
struct PayloadArena {
    static let hugePageBytes = 2 << 20
    static let firstChunkBytes = 1 << 20
    static let largestChunkBytes = 64 << 20
    /// Payloads start on 64-byte boundaries (cache lines; memcpy's fast path).
    static let payloadAlignment = 64

    private var chunk: PayloadChunk? = nil
    private var used = 0
    private var nextChunkBytes = PayloadArena.firstChunkBytes
    /// Bytes of chunks allocated so far (address space, not resident memory).
    private(set) var chunkBytes = 0

    /// Reserves `count` bytes (`count > 0`) for a payload the budget has admitted. The caller
    /// fills the range, outside the lock, before publishing it.
    mutating func reserve(_ count: Int, memoryBudgetBytes: Int) -> PayloadBytes {
        precondition(count > 0, "empty payload")
        if let chunk, chunk.capacity - used >= count {
            let slot = PayloadBytes(chunk: chunk, offset: used, count: count)
            used = min(chunk.capacity, Self.roundUp(used + count, to: Self.payloadAlignment))
            return slot
        }
        let budgetCap = Self.roundUp(memoryBudgetBytes, to: Self.hugePageBytes)
        let size = max(Self.roundUp(count, to: Self.payloadAlignment), min(nextChunkBytes, budgetCap))
        let fresh = PayloadChunk(capacity: size)
        chunkBytes += size
        nextChunkBytes = min(nextChunkBytes * 2, Self.largestChunkBytes)
        chunk = fresh
        used = min(size, Self.roundUp(count, to: Self.payloadAlignment))
        return PayloadBytes(chunk: fresh, offset: 0, count: count)
    }

    private static func roundUp(_ value: Int, to alignment: Int) -> Int {
        (value + alignment - 1) / alignment * alignment
    }
}
