// Pool space maps on disk — two copies per device, written alternately at checkpoints.
//
// Theory. Each device's free space is a bitmap, one bit per 4 KiB (SpaceMap.swift), stored in
// 4 KiB blocks. The pool keeps two copies of it (DeviceLayout.swift). A checkpoint writes the
// copy the previous checkpoint did not name, so the copy named by the newest durable uberblock is
// never overwritten. Only blocks that differ are written: `SpaceMapCopies.stale[c]` is the set of
// bitmap blocks in which copy c lags behind memory. Blocks the allocator reports dirty go stale in
// both copies; writing copy c clears its set. A copy never written (at create, the second copy; at
// import, the copy the root does not name, whose age is unknown) starts with every block stale.
// When nothing is stale in the current copy, the checkpoint names the same copy again and writes
// no space-map block at all.
//
// Checksums live in the parent: each copy has a checksum table (a crc32c per bitmap block), and
// the uberblock holds the crc32c of that table. Import verifies both before it believes a bit.
//
// The encoded blocks are a snapshot taken under the allocator's lock, so allocations that race a
// checkpoint belong wholly to one checkpoint or the next (the bitmap shows allocated space and
// frees deferred through the checkpoint being written as free; see SpaceMap.encodeBlock).

import StrataIO

/// Per device: which copy the root names, what each copy lags behind on, each copy's block crcs.
struct SpaceMapCopies: Sendable {
    let layout: DeviceLayout
    /// The copy the newest committed uberblock names; nil before the first commit.
    var current: Int?
    var stale: [Set<Int>]
    var checksums: [[UInt32]]

    init(layout: DeviceLayout) {
        self.layout = layout
        self.current = nil
        let all = Set(0..<layout.bitmapBlockCount)
        self.stale = [all, all]
        self.checksums = Array(repeating: Array(repeating: 0, count: layout.bitmapBlockCount), count: 2)
    }

    /// The copy the next checkpoint writes.
    func target(dirtyCount: Int) -> Int {
        guard let current else { return 0 }
        return stale[current].isEmpty && dirtyCount == 0 ? current : 1 - current
    }

    /// The table blocks of copy `copy`, encoded, and the crc32c over all of them.
    func encodeTable(copy: Int, into buffer: UnsafeMutableRawBufferPointer) -> UInt32 {
        precondition(buffer.count == layout.tableBlockCount * Int(DeviceLayout.metadataBlockBytes))
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        let writer = ByteWriter(buffer)
        for (block, checksum) in checksums[copy].enumerated() { writer.put(checksum, at: block * 4) }
        return CRC32C.checksum(UnsafeRawBufferPointer(buffer))
    }
}

extension Pool {
    static func makeAllocator(configuration: PoolConfiguration, devices: [any BlockStorage], openCheckpoint: UInt64) -> PoolAllocator {
        let members = configuration.members.enumerated().map { index, member in
            AllocatorDevice(index: index, path: devices[index].path, role: member.role,
                            sizeBytes: member.recordedSizeBytes, reservedRanges: member.layout.reservedRanges)
        }
        return PoolAllocator(devices: members, policy: configuration.policy, openCheckpoint: openCheckpoint)
    }

    /// Step 1 of the commit protocol: closes the allocator's checkpoint and encodes, for every
    /// device, the space-map blocks the copy this checkpoint will name lags behind on (a snapshot
    /// at this instant). Returns the cut and, per device, the copy it goes to.
    func cutSpaceMaps(checkpoint: UInt64, copies: inout [SpaceMapCopies]) -> (cut: CheckpointCut, targets: [Int]) {
        var targets = Array(repeating: 0, count: devices.count)
        let cut = allocator.beginCheckpoint { deviceIndex, dirty in
            for index in dirty {
                copies[deviceIndex].stale[0].insert(index)
                copies[deviceIndex].stale[1].insert(index)
            }
            let target = copies[deviceIndex].target(dirtyCount: dirty.count)
            targets[deviceIndex] = target
            return copies[deviceIndex].stale[target].sorted()
        }
        precondition(cut.checkpoint == checkpoint, "allocator closed checkpoint \(cut.checkpoint), the pool commits \(checkpoint)")
        return (cut, targets)
    }

    /// Step 2: writes the blocks `cutSpaceMaps` encoded to their copies, then each copy's
    /// checksum table. Returns the space-map roots for the uberblock.
    func writeSpaceMaps(cut: CheckpointCut, targets: [Int], copies: inout [SpaceMapCopies]) throws(PoolError) -> [SpaceMapRoot] {
        let blockBytes = Int(DeviceLayout.metadataBlockBytes)
        var roots: [SpaceMapRoot] = []
        for deviceIndex in devices.indices {
            let target = targets[deviceIndex]
            let layout = copies[deviceIndex].layout
            let device = devices[deviceIndex]
            let written = cut.spaceMaps.first { $0.deviceIndex == deviceIndex }
            if let written {
                precondition(Set(written.blockIndices) == copies[deviceIndex].stale[target], "cut and stale set disagree")
                var failure: PoolError? = nil
                written.bytes.withUnsafeBytes { encoded in
                    do throws(PoolError) {
                        try writeBitmapRuns(device: device, layout: layout, copy: target, blocks: written.blockIndices,
                                            encoded: encoded, checksums: &copies[deviceIndex].checksums[target])
                    } catch {
                        failure = error
                    }
                }
                if let failure { throw failure }
                copies[deviceIndex].stale[target] = []
            }
            let table = allocateAlignedBuffer(byteCount: layout.tableBlockCount * blockBytes)
            defer { table.deallocate() }
            let tableChecksum = copies[deviceIndex].encodeTable(copy: target, into: table)
            if written != nil || copies[deviceIndex].current != target {
                do {
                    try device.write(UnsafeRawBufferPointer(table), at: layout.tableBlockOffset(copy: target, block: 0), fua: false)
                } catch {
                    throw .io(error)
                }
            }
            copies[deviceIndex].current = target
            roots.append(SpaceMapRoot(copy: UInt8(target), tableChecksum: tableChecksum, bitmapBlockCount: UInt32(layout.bitmapBlockCount)))
        }
        return roots
    }

    /// Writes encoded bitmap blocks to one copy, in runs of consecutive indices (≤ 1 MiB per write,
    /// through an aligned buffer for O_DIRECT), recording each block's crc32c for the table.
    private func writeBitmapRuns(device: any BlockStorage, layout: DeviceLayout, copy: Int, blocks: [Int],
                                 encoded: UnsafeRawBufferPointer, checksums: inout [UInt32]) throws(PoolError) {
        let blockBytes = Int(DeviceLayout.metadataBlockBytes)
        precondition(encoded.count == blocks.count * blockBytes, "\(encoded.count) bytes for \(blocks.count) blocks")
        let runBlocksMax = 256
        let run = allocateAlignedBuffer(byteCount: runBlocksMax * blockBytes)
        defer { run.deallocate() }
        var start = 0
        while start < blocks.count {
            var end = start + 1
            while end < blocks.count && blocks[end] == blocks[end - 1] + 1 && end - start < runBlocksMax { end += 1 }
            let bytes = UnsafeRawBufferPointer(rebasing: encoded[(start * blockBytes)..<(end * blockBytes)])
            run.copyMemory(from: bytes)
            for position in start..<end {
                checksums[blocks[position]] = CRC32C.checksum(
                    UnsafeRawBufferPointer(rebasing: encoded[(position * blockBytes)..<((position + 1) * blockBytes)]))
            }
            do {
                try device.write(UnsafeRawBufferPointer(rebasing: run[0..<bytes.count]),
                                 at: layout.bitmapBlockOffset(copy: copy, block: blocks[start]), fua: false)
            } catch {
                throw .io(error)
            }
            start = end
        }
    }

    /// Reads and verifies the space-map copy `root` names, and loads it into the allocator.
    static func loadSpaceMap(device: any BlockStorage, index: Int, layout: DeviceLayout, root: SpaceMapRoot,
                             allocator: PoolAllocator) throws(PoolError) -> SpaceMapCopies {
        let blockBytes = Int(DeviceLayout.metadataBlockBytes)
        let copy = Int(root.copy)
        guard Int(root.bitmapBlockCount) == layout.bitmapBlockCount else {
            throw .corruptMetadata(path: device.path, detail: "uberblock names \(root.bitmapBlockCount) space-map blocks, the label's size gives \(layout.bitmapBlockCount)")
        }
        var copies = SpaceMapCopies(layout: layout)
        let table = allocateAlignedBuffer(byteCount: layout.tableBlockCount * blockBytes)
        defer { table.deallocate() }
        do { try device.read(into: table, at: layout.tableBlockOffset(copy: copy, block: 0)) } catch { throw .io(error) }
        guard CRC32C.checksum(UnsafeRawBufferPointer(table)) == root.tableChecksum else {
            throw .corruptMetadata(path: device.path, detail: "space map copy \(copy): checksum table does not match its uberblock checksum")
        }
        let reader = ByteReader(UnsafeRawBufferPointer(table))
        for block in 0..<layout.bitmapBlockCount { copies.checksums[copy][block] = reader.get(UInt32.self, at: block * 4) }

        let chunkBlocks = 256
        let chunk = allocateAlignedBuffer(byteCount: chunkBlocks * blockBytes)
        defer { chunk.deallocate() }
        var first = 0
        while first < layout.bitmapBlockCount {
            let count = min(chunkBlocks, layout.bitmapBlockCount - first)
            let bytes = UnsafeMutableRawBufferPointer(rebasing: chunk[0..<(count * blockBytes)])
            do { try device.read(into: bytes, at: layout.bitmapBlockOffset(copy: copy, block: first)) } catch { throw .io(error) }
            for position in 0..<count {
                let block = UnsafeRawBufferPointer(rebasing: chunk[(position * blockBytes)..<((position + 1) * blockBytes)])
                guard CRC32C.checksum(block) == copies.checksums[copy][first + position] else {
                    throw .corruptMetadata(path: device.path, detail: "space map copy \(copy) bitmap block \(first + position): checksum mismatch")
                }
                do {
                    try allocator.loadSpaceMapBlock(deviceIndex: index, blockIndex: first + position, from: block)
                } catch {
                    throw .corruptMetadata(path: device.path, detail: error.description)
                }
            }
            first += count
        }
        copies.current = copy
        copies.stale[copy] = []
        return copies
    }
}
