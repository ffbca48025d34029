// RecordingDevice — a BlockStorage wrapper that reports every write, FUA write, flush and
// discard to its CrashRecorder, then passes it on.
//
// Theory. The system under test sees an ordinary device; the recorder sees, on its session
// clock, each write's issue (with a copy of its bytes) and completion, and each flush's issue
// and completion. That is everything the crash model needs (dm-log-writes records the same
// things in the kernel). Reads are passed through unrecorded: they do not change what a crash
// can leave behind.
//
// Invariants: a request is validated (alignment, range, read-only) before it is recorded, so a
// refused request never appears in a crash image; a request the wrapped device fails is
// recorded as failed (a failed write may or may not be on the media; a failed flush makes
// nothing durable). A write past the session's memory budget is refused with `IOError.device`
// (ENOMEM) before it reaches the device. Thread-safe: the recorder serialises its bookkeeping,
// the wrapped device handles concurrency of the I/O itself.

import StrataIO

/// A `BlockStorage` that records everything written through it into a `CrashRecorder`
/// session. Create it with `CrashRecorder.record(_:base:)`.
public final class RecordingDevice: BlockStorage {
    /// The device I/O is passed to.
    public let device: any BlockStorage
    public let recorder: CrashRecorder
    /// This device's index in the recording (`Recording.devices[deviceIndex]`).
    public let deviceIndex: Int

    public var path: String { device.path }
    public var sizeBytes: UInt64 { device.sizeBytes }
    public var blockSizeBytes: Int { device.blockSizeBytes }
    public var isReadOnly: Bool { device.isReadOnly }

    init(device: any BlockStorage, recorder: CrashRecorder, deviceIndex: Int) {
        self.device = device
        self.recorder = recorder
        self.deviceIndex = deviceIndex
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64) throws(IOError) {
        try device.read(into: buffer, at: offset)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at offset: UInt64, fua: Bool) throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        try validateRange(path: path, offset: offset, length: buffer.count, blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let index = try recorder.beginWrite(device: deviceIndex, path: path, offset: offset, bytes: buffer,
                                            length: buffer.count, fua: fua)
        do {
            try device.write(buffer, at: offset, fua: fua)
        } catch {
            recorder.failWrite(index)
            throw error
        }
        recorder.completeWrite(index)
    }

    public func flush() throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        let index = recorder.beginFlush(device: deviceIndex)
        do {
            try device.flush()
        } catch {
            recorder.failFlush(index)
            throw error
        }
        recorder.completeFlush(index)
    }

    public func discard(offset: UInt64, length: UInt64) throws(IOError) {
        guard !isReadOnly else { throw .readOnly(path: path) }
        try validateRange(path: path, offset: offset, length: Int(length), blockSizeBytes: blockSizeBytes, sizeBytes: sizeBytes)
        let index = try recorder.beginWrite(device: deviceIndex, path: path, offset: offset, bytes: nil,
                                            length: Int(length), fua: false)
        do {
            try device.discard(offset: offset, length: length)
        } catch {
            recorder.failWrite(index)
            throw error
        }
        recorder.completeWrite(index)
    }
}
