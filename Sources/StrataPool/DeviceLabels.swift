// DeviceLabels — what one device's two labels say: its configuration slots and uberblock ring.
//
// Theory. A device is read label by label, slot by slot, and nothing is trusted that fails its
// checksum. The front label is at offset 0; the back label's place depends on the recorded size,
// which is learnt from any valid configuration slot (front or back). If no front slot is valid
// (a corrupted front label), the back label is looked for at the end of the device's current
// size rounded down to whole MiB — where create put it, unless the device changed size.
//
// The result keeps every valid configuration generation and every valid uberblock, plus a note
// for each slot that was present but invalid (torn, corrupt, or of a newer format), so import can
// report precisely why a device was rejected and status can report a damaged label copy.

import StrataIO

public struct DeviceLabels: Sendable {
    public let path: String
    /// Valid configuration slots: (generation, configuration, device index), any label.
    public private(set) var configurations: [(configuration: PoolConfiguration, deviceIndex: Int, labelOffset: UInt64)] = []
    /// Valid uberblocks, any slot of any label.
    public private(set) var uberblocks: [Uberblock] = []
    /// Slots present but unusable, e.g. "front label configuration slot 1: checksum mismatch".
    /// A slot without the magic is not a label block and is not reported (it may be data).
    public private(set) var damage: [String] = []
    /// A slot present but unusable (torn, corrupt, wrong slot, newer format), by place: what a
    /// read-write import rewrites or zeroes.
    public struct DamagedSlot: Equatable, Sendable {
        public var labelOffset: UInt64
        public var isConfiguration: Bool
        public var slot: Int
    }
    public private(set) var damagedSlots: [DamagedSlot] = []
    /// A format version newer than this build reads, when one was seen.
    /// `supported`: the newest version of that kind of block this build reads.
    public private(set) var newerVersion: (what: String, version: UInt32, supported: UInt32)? = nil

    /// The newest valid configuration on this device.
    public var newestConfiguration: (configuration: PoolConfiguration, deviceIndex: Int)? {
        guard let best = configurations.max(by: { $0.configuration.generation < $1.configuration.generation }) else { return nil }
        return (best.configuration, best.deviceIndex)
    }

    /// The configuration of generation `generation`, when this device holds it.
    public func configuration(generation: UInt64) -> (configuration: PoolConfiguration, deviceIndex: Int)? {
        configurations.first { $0.configuration.generation == generation }.map { ($0.configuration, $0.deviceIndex) }
    }

    /// How many label copies hold generation `generation` (0, 1 or 2).
    public func labelCopies(holding generation: UInt64) -> Int {
        Set(configurations.filter { $0.configuration.generation == generation }.map(\.labelOffset)).count
    }

    /// Reads both labels of `device`. Throws only for I/O errors; bad content is recorded.
    public static func read(_ device: any BlockStorage) throws(IOError) -> DeviceLabels {
        var labels = DeviceLabels(path: device.path)
        let buffer = allocateAlignedBuffer(byteCount: Int(DeviceLayout.labelBytes))
        defer { buffer.deallocate() }
        guard device.sizeBytes >= DeviceLayout.labelBytes else { return labels }

        try device.read(into: buffer, at: 0)
        labels.parse(label: UnsafeRawBufferPointer(buffer), at: 0, name: "front")

        // The back label sits at the end of the recorded size (from a valid front slot); with no
        // valid front slot, at the end of the current size rounded down to whole MiB.
        let recorded = labels.configurations.first.map { $0.configuration.members[$0.deviceIndex].recordedSizeBytes }
        let backEnd = recorded.flatMap { $0 <= device.sizeBytes ? $0 : nil }
            ?? DeviceLayout.recordedSize(forDeviceBytes: device.sizeBytes)
        if backEnd >= DeviceLayout.labelBytes * 2 {
            try device.read(into: buffer, at: backEnd - DeviceLayout.labelBytes)
            labels.parse(label: UnsafeRawBufferPointer(buffer), at: backEnd - DeviceLayout.labelBytes, name: "back")
        }
        return labels
    }

    init(path: String) { self.path = path }

    private mutating func parse(label: UnsafeRawBufferPointer, at labelOffset: UInt64, name: String) {
        for slot in 0..<DeviceLayout.configSlotCount {
            let start = Int(DeviceLayout.configSlotOffset(labelOffset: 0, slot: slot))
            let bytes = UnsafeRawBufferPointer(rebasing: label[start..<(start + Int(DeviceLayout.configSlotBytes))])
            switch PoolConfiguration.decode(bytes) {
            case .empty: break
            case .invalid(let why):
                if why != "bad magic" {
                    damage.append("\(name) label configuration slot \(slot): \(why)")
                    damagedSlots.append(DamagedSlot(labelOffset: labelOffset, isConfiguration: true, slot: slot))
                }
            case .newerVersion(let version):
                newerVersion = ("label configuration", version, PoolConfiguration.formatVersion)
                damage.append("\(name) label configuration slot \(slot): format version \(version)")
            case .valid(let configuration, let deviceIndex):
                // Generation g lives in slot g % 2; elsewhere it could be overwritten by a change.
                if Int(configuration.generation % UInt64(DeviceLayout.configSlotCount)) == slot {
                    configurations.append((configuration, deviceIndex, labelOffset))
                } else {
                    damage.append("\(name) label configuration slot \(slot): holds generation \(configuration.generation) (wrong slot)")
                    damagedSlots.append(DamagedSlot(labelOffset: labelOffset, isConfiguration: true, slot: slot))
                }
            }
        }
        for slot in 0..<DeviceLayout.uberblockSlotCount {
            let start = Int(DeviceLayout.uberblockSlotOffset(labelOffset: 0, slot: slot))
            let bytes = UnsafeRawBufferPointer(rebasing: label[start..<(start + Int(DeviceLayout.uberblockSlotBytes))])
            switch Uberblock.decode(bytes) {
            case .empty: break
            case .invalid(let why):
                if why != "bad magic" {
                    damage.append("\(name) label uberblock slot \(slot): \(why)")
                    damagedSlots.append(DamagedSlot(labelOffset: labelOffset, isConfiguration: false, slot: slot))
                }
            case .newerVersion(let version):
                newerVersion = ("uberblock", version, Uberblock.formatVersion)
                damage.append("\(name) label uberblock slot \(slot): format version \(version)")
            case .valid(let uberblock):
                if Int(uberblock.checkpoint % UInt64(DeviceLayout.uberblockSlotCount)) == slot {
                    uberblocks.append(uberblock)
                } else {
                    damage.append("\(name) label uberblock slot \(slot): holds checkpoint \(uberblock.checkpoint) (wrong slot)")
                    damagedSlots.append(DamagedSlot(labelOffset: labelOffset, isConfiguration: false, slot: slot))
                }
            }
        }
    }
}
