// DeviceLayout — where the label copies, the space maps and the allocatable space sit on one
// pool device.
//
//   0                     front label (labelBytes = 256 KiB)
//                           [0, 8 KiB)      two configuration slots, 4 KiB each
//                           [8 KiB, 136 KiB) uberblock ring: uberblockSlotCount slots of 4 KiB
//                           [136 KiB, 256 KiB) reserved (zero)
//   256 KiB               space map copy A: bitmap blocks, then checksum-table blocks
//                         space map copy B: the same
//   spaceMapEnd           allocatable space (1 MiB aligned start)
//   recordedSize-256 KiB  back label (same layout as the front one)
//   recordedSize          end (the size recorded in the label at create, a multiple of 1 MiB)
//
// The back label is found from the *recorded* size, not the current one, so a device that grew
// keeps its labels, and one that shrank below its recorded size is reported as truncated.
//
// The space map has two copies because it is rewritten at every checkpoint but must never be
// overwritten while the newest durable uberblock still points at it: checkpoint N writes the copy
// that checkpoint N-1 did not use, and names it in its uberblock. One bitmap block covers 128 MiB
// (32768 units of 4 KiB); the checksum table holds a crc32c per bitmap block (1024 per 4 KiB
// block), and the uberblock holds the crc32c of the table — checksums live in the parent.

public struct DeviceLayout: Equatable, Sendable {
    public static let labelBytes: UInt64 = 256 << 10
    public static let configSlotBytes: UInt64 = 4096
    public static let configSlotCount = 2
    public static let uberblockSlotBytes: UInt64 = 4096
    public static let uberblockSlotCount = 32
    public static let uberblockRingOffset: UInt64 = configSlotBytes * UInt64(configSlotCount)
    public static let metadataBlockBytes: UInt64 = 4096
    /// Bytes of device covered by one 4 KiB bitmap block (32768 units of 4 KiB).
    public static let bytesPerBitmapBlock: UInt64 = 4096 * 8 * 4096
    public static let checksumsPerTableBlock: UInt64 = 1024
    /// Devices are sized in whole MiB; the allocatable start is MiB aligned.
    public static let alignmentBytes: UInt64 = 1 << 20
    /// The smallest device a pool accepts: labels and space maps plus room for data.
    public static let deviceBytesMin: UInt64 = 64 << 20

    /// The device size recorded in the label (a multiple of `alignmentBytes`).
    public let recordedSizeBytes: UInt64
    public let bitmapBlockCount: Int
    public let tableBlockCount: Int

    public init(recordedSizeBytes: UInt64) {
        precondition(recordedSizeBytes % DeviceLayout.alignmentBytes == 0, "recorded size \(recordedSizeBytes) not MiB aligned")
        precondition(recordedSizeBytes >= DeviceLayout.deviceBytesMin, "recorded size \(recordedSizeBytes) below minimum")
        self.recordedSizeBytes = recordedSizeBytes
        let bitmapBlocks = (recordedSizeBytes + DeviceLayout.bytesPerBitmapBlock - 1) / DeviceLayout.bytesPerBitmapBlock
        self.bitmapBlockCount = Int(bitmapBlocks)
        self.tableBlockCount = Int((bitmapBlocks + DeviceLayout.checksumsPerTableBlock - 1) / DeviceLayout.checksumsPerTableBlock)
    }

    /// The size a device of `sizeBytes` is recorded as: rounded down to whole MiB.
    public static func recordedSize(forDeviceBytes sizeBytes: UInt64) -> UInt64 {
        sizeBytes / alignmentBytes * alignmentBytes
    }

    public var frontLabelOffset: UInt64 { 0 }
    public var backLabelOffset: UInt64 { recordedSizeBytes - DeviceLayout.labelBytes }
    public var labelOffsets: [UInt64] { [frontLabelOffset, backLabelOffset] }

    public static func configSlotOffset(labelOffset: UInt64, slot: Int) -> UInt64 {
        precondition(slot >= 0 && slot < configSlotCount)
        return labelOffset + UInt64(slot) * configSlotBytes
    }

    public static func uberblockSlotOffset(labelOffset: UInt64, slot: Int) -> UInt64 {
        precondition(slot >= 0 && slot < uberblockSlotCount)
        return labelOffset + uberblockRingOffset + UInt64(slot) * uberblockSlotBytes
    }

    /// Blocks of one space-map copy (bitmap + checksum table).
    public var spaceMapCopyBlocks: Int { bitmapBlockCount + tableBlockCount }

    public func spaceMapCopyOffset(_ copy: Int) -> UInt64 {
        precondition(copy == 0 || copy == 1, "space map copy \(copy)")
        return DeviceLayout.labelBytes + UInt64(copy * spaceMapCopyBlocks) * DeviceLayout.metadataBlockBytes
    }

    public func bitmapBlockOffset(copy: Int, block: Int) -> UInt64 {
        precondition(block >= 0 && block < bitmapBlockCount)
        return spaceMapCopyOffset(copy) + UInt64(block) * DeviceLayout.metadataBlockBytes
    }

    public func tableBlockOffset(copy: Int, block: Int) -> UInt64 {
        precondition(block >= 0 && block < tableBlockCount)
        return spaceMapCopyOffset(copy) + UInt64(bitmapBlockCount + block) * DeviceLayout.metadataBlockBytes
    }

    /// First allocatable byte: after both space-map copies, rounded up to 1 MiB.
    public var allocatableStart: UInt64 {
        let end = spaceMapCopyOffset(1) + UInt64(spaceMapCopyBlocks) * DeviceLayout.metadataBlockBytes
        return (end + DeviceLayout.alignmentBytes - 1) / DeviceLayout.alignmentBytes * DeviceLayout.alignmentBytes
    }

    /// End of allocatable space: the back label.
    public var allocatableEnd: UInt64 { backLabelOffset }

    /// Ranges the allocator must never hand out: the front label and space maps, the back label.
    public var reservedRanges: [Range<UInt64>] {
        [0..<allocatableStart, backLabelOffset..<recordedSizeBytes]
    }
}
