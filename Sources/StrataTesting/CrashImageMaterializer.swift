// CrashImageMaterializer — turns a named CrashImage into a set of per-device OverlayDevices.
//
// Theory. For each device, the image is its base plus (1) every write durable at the crash
// point and (2) the image's persisted pending writes, applied block by block with
// newest-wins (a write's age is its completion sequence; an in-flight write is newer than any
// completed one). Applying all durable writes from scratch for each image would make a run
// quadratic in the workload's length, so the materialiser keeps a cursor: the durable block
// map at the last crash point asked for, advanced write by write as crash points grow
// (images from the generator come sorted by crash point). Each image then costs one copy of
// that map (entries, not bytes — blocks are shared slices of the recorded payloads) plus its
// pending writes. The recorder keeps payloads in its arena; each write's bytes are copied into
// one array the first time an image uses it, and every image then shares slices of that.
//
// Invariants: the base images are never written; the returned overlays start with exactly the
// blocks the crash model allows at the crash point. A device without a base image is an
// operating error (`CrashTestError.noBaseImage`). Not thread-safe (the cursor): one per thread.

import StrataIO

/// Builds `OverlayDevice`s for crash images of one recording.
public final class CrashImageMaterializer {
    public let recording: Recording
    private let bases: [any BlockStorage]
    /// Durable writes ordered by the sequence at which they became durable.
    private let durableOrder: [Int]
    private var cursorIndex = 0
    private var durableMaps: [[UInt64: StampedBlock]]
    /// Payloads copied out of the recording's arena, by write index (see `payloadArray(of:)`).
    private var payloadArrays: [Int: [UInt8]] = [:]

    struct StampedBlock {
        var bytes: ArraySlice<UInt8>
        var age: UInt64
    }

    /// A materialiser over the recording's own base images, or over `bases` (one per device)
    /// when given.
    public init(recording: Recording, bases: [any BlockStorage]? = nil) throws(CrashTestError) {
        var resolved: [any BlockStorage] = []
        for device in recording.devices {
            if let given = bases, device.index < given.count {
                resolved.append(given[device.index])
            } else if let base = device.base {
                resolved.append(base)
            } else {
                throw .noBaseImage(device: device.path)
            }
        }
        self.recording = recording
        self.bases = resolved
        self.durableOrder = recording.writes.filter { $0.durableSequence != nil }
            .sorted { ($0.durableSequence!, $0.index) < ($1.durableSequence!, $1.index) }
            .map(\.index)
        self.durableMaps = Array(repeating: [:], count: recording.devices.count)
    }

    /// The devices of `image`: one fresh overlay per recorded device, in device order.
    public func devices(for image: CrashImage) -> [OverlayDevice] {
        let crashPoint = image.crashPoint
        if cursorIndex > 0, recording.writes[durableOrder[cursorIndex - 1]].durableSequence! > crashPoint {
            cursorIndex = 0
            durableMaps = Array(repeating: [:], count: recording.devices.count)
        }
        while cursorIndex < durableOrder.count {
            let write = recording.writes[durableOrder[cursorIndex]]
            guard write.durableSequence! <= crashPoint else { break }
            apply(write, keptUnits: nil, to: &durableMaps[write.device])
            cursorIndex += 1
        }
        var maps = durableMaps
        for persisted in image.persisted {
            let write = recording.writes[persisted.writeIndex]
            precondition(write.isPending(at: crashPoint), "image keeps write \(write.index), not pending at \(crashPoint)")
            apply(write, keptUnits: persisted.keptUnits, to: &maps[write.device])
        }
        return recording.devices.map { device in
            OverlayDevice(base: bases[device.index], blocks: maps[device.index].mapValues(\.bytes),
                          path: device.path)
        }
    }

    /// The write's bytes as one array, copied out of the recorder's arena the first time an
    /// image needs them; every block of every image that keeps the write is a slice of it.
    private func payloadArray(of write: RecordedWrite) -> [UInt8]? {
        guard let bytes = write.payloadBytes else { return nil }
        if let cached = payloadArrays[write.index] { return cached }
        let array = bytes.array
        payloadArrays[write.index] = array
        return array
    }

    private func apply(_ write: RecordedWrite, keptUnits: [Int]?, to map: inout [UInt64: StampedBlock]) {
        let blockSize = recording.devices[write.device].blockSizeBytes
        let age = write.completeSequence ?? (UInt64.max / 2 + write.issueSequence)
        let firstBlock = write.offset / UInt64(blockSize)
        let firstUnit = write.offset / UInt64(CrashImage.tearUnitBytes)
        let kept = keptUnits.map(Set.init)
        let payload = payloadArray(of: write)
        let zero = payload == nil ? BlockMap.zeroBlock(blockSizeBytes: blockSize) : []
        for blockIndex in 0..<(write.length / blockSize) {
            let block = firstBlock + UInt64(blockIndex)
            if let kept {
                let unit = Int(block * UInt64(blockSize) / UInt64(CrashImage.tearUnitBytes) - firstUnit)
                guard kept.contains(unit) else { continue }
            }
            if let existing = map[block], existing.age > age { continue }
            let bytes: ArraySlice<UInt8>
            if let payload {
                bytes = payload[(blockIndex * blockSize)..<((blockIndex + 1) * blockSize)]
            } else {
                bytes = zero
            }
            map[block] = StampedBlock(bytes: bytes, age: age)
        }
    }
}
