// FlushFaultDevice — a device that breaks the flush contract, to prove the pool's crash tests
// can fail.
//
// Theory. The pool's commit protocol rests on two promises of its devices: a completed flush
// makes every write completed before it durable, and the writes before the flush are on the
// media before the uberblock written after it. A harness that passes a pool whose devices break
// them checks nothing, so the pool crash tests run once over devices that do (issue 5: "a
// harness that passes a buggy store is a defect"):
//
//   - `flushIgnored`: flush returns at once and makes nothing durable (a drive that lies about
//     its cache). A commit then returns with its uberblock still volatile: an image that loses
//     it shows an older checkpoint than one whose commit returned.
//   - `writesAfterFlush`: writes issued before a flush reach the device only after it, so the
//     flush before the uberblock covers none of the space-map and root-block writes it exists
//     for — the same crash states as a pool that skipped that flush, or wrote the uberblock
//     first. An image can keep uberblock N and lose what it names.
//
// Sits between the pool and the recording device, so the recorder sees what the faulty device
// passes on. Reads drain the queue first (read-your-writes). Queued writes are validated by the
// wrapped device when they are passed on (the pool issues only valid requests). Thread-safe (one
// Mutex).

import StrataIO
import Synchronization

/// A `BlockStorage` wrapper that breaks flushes in one of two ways (see the file comment).
public final class FlushFaultDevice: BlockStorage {
    public enum Fault: String, Sendable, CaseIterable {
        /// Flushes make nothing durable.
        case flushIgnored = "flush-ignored"
        /// Writes before a flush reach the device after it.
        case writesAfterFlush = "writes-after-flush"

        public var summary: String {
            switch self {
            case .flushIgnored: return "devices acknowledge flushes without making anything durable"
            case .writesAfterFlush: return "writes issued before a flush land after it (the flush before the uberblock covers nothing)"
            }
        }
    }

    public let device: any BlockStorage
    public let fault: Fault
    private let queued = Mutex<[(offset: UInt64, bytes: [UInt8], fua: Bool)]>([])

    public var path: String { device.path }
    public var sizeBytes: UInt64 { device.sizeBytes }
    public var blockSizeBytes: Int { device.blockSizeBytes }
    public var isReadOnly: Bool { device.isReadOnly }

    public init(_ device: any BlockStorage, fault: Fault) {
        self.device = device
        self.fault = fault
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try drain()
        try device.read(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        switch fault {
        case .flushIgnored:
            try device.write(buffer, at: offset, fua: false)
        case .writesAfterFlush:
            let bytes = [UInt8](buffer)
            queued.withLock { $0.append((offset, bytes, fua)) }
        }
    }

    public func flush() throws(IOError) {
        switch fault {
        case .flushIgnored:
            return
        case .writesAfterFlush:
            try device.flush()
            try drain()
        }
    }

    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        try drain()
        try device.discard(offset: offset, length: length)
    }

    /// Passes the queued writes on, in issue order.
    private func drain() throws(IOError) {
        let writes = queued.withLock { queue in
            defer { queue.removeAll() }
            return queue
        }
        for write in writes {
            var failure: IOError? = nil
            write.bytes.withUnsafeBytes { raw in
                do throws(IOError) { try device.write(raw, at: write.offset, fua: write.fua) } catch { failure = error }
            }
            if let failure { throw failure }
        }
    }
}
