// Golden-bytes tests: they pin the byte layout of the configuration slot and the uberblock. A
// change to either layout must fail here, and must come with a format version bump.

import Testing
import StrataIO
@testable import StrataPool

enum GoldenFixtures {
    static func configuration() -> PoolConfiguration {
        var policy = PoolPolicy()
        policy.setCopies(2, for: .metadata)
        policy.spillThresholdPercent = 80
        policy.smallBlockCutoffBytes = 65536
        return PoolConfiguration(
            name: "tank", uuid: PoolUUID(high: 0x0102_0304_0506_0708, low: 0x090A_0B0C_0D0E_0F10),
            generation: 3, createdTimeNs: 1_700_000_000_000_000_000,
            members: [
                PoolMember(uuid: PoolUUID(high: 0xA1, low: 0xA2), role: .data, holdsEveryRole: false, recordedSizeBytes: 1 << 30),
                PoolMember(uuid: PoolUUID(high: 0xB1, low: 0xB2), role: .metadata, holdsEveryRole: false, recordedSizeBytes: 256 << 20),
            ],
            policy: policy)
    }

    static func uberblock() -> Uberblock {
        var roots = Array(repeating: BlockPointer.null, count: Uberblock.rootSlotCount)
        roots[Uberblock.RootSlot.intentLog.rawValue] = BlockPointer(deviceIndex: 1, offsetBytes: 0x10_0000, lengthBytes: 4096,
                                                                    birthCheckpoint: 41, checksum: 0xDEAD_BEEF)
        return Uberblock(poolUUID: PoolUUID(high: 0x0102_0304_0506_0708, low: 0x090A_0B0C_0D0E_0F10), checkpoint: 42,
                         timeNs: 1_700_000_000_123_456_789, configurationGeneration: 3, state: .active, roots: roots,
                         spaceMaps: [SpaceMapRoot(copy: 1, tableChecksum: 0x1122_3344, bitmapBlockCount: 8),
                                     SpaceMapRoot(copy: 0, tableChecksum: 0x5566_7788, bitmapBlockCount: 2)])
    }

    static func hex(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> String {
        bytes[range].map { byte in
            let text = String(byte, radix: 16)
            return text.count == 1 ? "0" + text : text
        }.joined()
    }
}

@Suite struct OnDiskFormatTests {
    @Test func configurationSlotGoldenBytes() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        GoldenFixtures.configuration().encode(deviceIndex: 1, into: block)
        let bytes = UnsafeRawBufferPointer(block)
        // magic, version 1, block size 4096, pool uuid, device uuid of member 1
        #expect(GoldenFixtures.hex(bytes, 0..<48) ==
            "5354524154434647" + "01000000" + "00100000" + "0807060504030201" + "100f0e0d0c0b0a09"
            + "b100000000000000" + "b200000000000000")
        // generation 3, created time, index 1, count 2, name length 4, "tank"
        #expect(GoldenFixtures.hex(bytes, 48..<80) ==
            "0300000000000000" + "00002a36fe9c9717" + "0100" + "0200" + "04000000" + "74616e6b00000000")
        // policy: copies [_,2,1,1,1,1], spill 80, reserve 25, promote 2, high 85, low 70, pad, cutoff 64 KiB
        #expect(GoldenFixtures.hex(bytes, 136..<168) ==
            "010201010101" + "50" + "19" + "02" + "55" + "46" + "0000000000" + "0000010000000000" + "0000000000000000")
        // member 0: uuid, 1 GiB, role data (2), flags 0
        #expect(GoldenFixtures.hex(bytes, 168..<200) ==
            "a100000000000000" + "a200000000000000" + "0000004000000000" + "02" + "00" + "000000000000")
        #expect(bytes[232..<4092].allSatisfy { $0 == 0 })
        #expect(ByteReader(bytes).get(UInt32.self, at: 4092) == CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[0..<4092])))
        #expect(GoldenFixtures.hex(bytes, 4092..<4096) == "138a4c53", "stored checksum moved: the layout changed")
    }

    @Test func configurationRoundTrips() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        let configuration = GoldenFixtures.configuration()
        configuration.encode(deviceIndex: 0, into: block)
        #expect(PoolConfiguration.decode(UnsafeRawBufferPointer(block)) == .valid(configuration, deviceIndex: 0))
    }

    @Test func uberblockGoldenBytes() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        GoldenFixtures.uberblock().encode(into: block)
        let bytes = UnsafeRawBufferPointer(block)
        #expect(GoldenFixtures.hex(bytes, 0..<64) ==
            "5354524154554252" + "02000000" + "00100000" + "0807060504030201" + "100f0e0d0c0b0a09"
            + "2a00000000000000" + "15cd853dfe9c9717" + "0300000000000000" + "01" + "00" + "0200" + "00000000")
        // root 0 (intent log): offset 1 MiB, length 4096, birth 41, device 1, crc
        #expect(GoldenFixtures.hex(bytes, 64..<96) ==
            "0000100000000000" + "0010000000000000" + "2900000000000000" + "0100" + "0000" + "efbeadde")
        #expect(bytes[96..<320].allSatisfy { $0 == 0 })
        #expect(GoldenFixtures.hex(bytes, 320..<352) ==
            "01000000" + "44332211" + "08000000" + "00000000" + "00000000" + "88776655" + "02000000" + "00000000")
        #expect(bytes[352..<4092].allSatisfy { $0 == 0 })
        #expect(GoldenFixtures.hex(bytes, 4092..<4096) == "22a22e9a", "stored checksum moved: the layout changed")
    }

    @Test func uberblockRoundTrips() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        GoldenFixtures.uberblock().encode(into: block)
        #expect(Uberblock.decode(UnsafeRawBufferPointer(block)) == .valid(GoldenFixtures.uberblock()))
    }

    /// Version 1 (one-address pointers only, written before two-address pointers existed) is
    /// still read; version 0 is not a version.
    @Test func uberblockVersionOneIsStillReadAndZeroIsNot() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        GoldenFixtures.uberblock().encode(into: block)
        ByteWriter(block).put(UInt32(1), at: 8)
        ByteWriter(block).sealWithChecksum()
        #expect(Uberblock.decode(UnsafeRawBufferPointer(block)) == .valid(GoldenFixtures.uberblock()))
        ByteWriter(block).put(UInt32(0), at: 8)
        ByteWriter(block).sealWithChecksum()
        if case .valid = Uberblock.decode(UnsafeRawBufferPointer(block)) { Issue.record("version 0 read as valid") }
        ByteWriter(block).put(UInt32(3), at: 8)
        ByteWriter(block).sealWithChecksum()
        #expect(Uberblock.decode(UnsafeRawBufferPointer(block)) == .newerVersion(3))
    }

    @Test func newerVersionIsRefusedNotMisread() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        GoldenFixtures.configuration().encode(deviceIndex: 0, into: block)
        ByteWriter(block).put(UInt32(2), at: 8)
        ByteWriter(block).sealWithChecksum()
        #expect(PoolConfiguration.decode(UnsafeRawBufferPointer(block)) == .newerVersion(2))
        GoldenFixtures.uberblock().encode(into: block)
        ByteWriter(block).put(UInt32(7), at: 8)
        ByteWriter(block).sealWithChecksum()
        #expect(Uberblock.decode(UnsafeRawBufferPointer(block)) == .newerVersion(7))
    }

    @Test func everySingleBitFlipIsDetected() {
        let block = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
        defer { block.deallocate() }
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            GoldenFixtures.uberblock().encode(into: block)
            let bit = Int.random(in: 0..<(4096 * 8), using: &generator)
            block[bit / 8] ^= UInt8(1 << (bit % 8))
            switch Uberblock.decode(UnsafeRawBufferPointer(block)) {
            case .invalid: break
            default: Issue.record("bit \(bit) flipped and the uberblock still decoded")
            }
            GoldenFixtures.configuration().encode(deviceIndex: 1, into: block)
            block[bit / 8] ^= UInt8(1 << (bit % 8))
            switch PoolConfiguration.decode(UnsafeRawBufferPointer(block)) {
            case .invalid: break
            default: Issue.record("bit \(bit) flipped and the configuration still decoded")
            }
        }
    }

    @Test func layoutPlacesEverythingInOrder() {
        let layout = DeviceLayout(recordedSizeBytes: 1 << 40)
        #expect(layout.bitmapBlockCount == 8192)
        #expect(layout.tableBlockCount == 8)
        #expect(layout.spaceMapCopyOffset(0) == 256 << 10)
        #expect(layout.allocatableStart % DeviceLayout.alignmentBytes == 0)
        #expect(layout.allocatableStart >= layout.spaceMapCopyOffset(1) + UInt64(layout.spaceMapCopyBlocks) * 4096)
        #expect(layout.backLabelOffset == (1 << 40) - (256 << 10))
        let small = DeviceLayout(recordedSizeBytes: DeviceLayout.deviceBytesMin)
        #expect(small.bitmapBlockCount == 1 && small.tableBlockCount == 1)
        #expect(small.allocatableStart == 1 << 20)
        #expect(DeviceLayout.uberblockSlotOffset(labelOffset: 0, slot: 31) + 4096 <= DeviceLayout.labelBytes)
    }
}
