// ObjectStore+Apply — the one place operations change the in-memory state, shared by execution
// (a transaction's operation, holding the object's stripe lock) and replay (single-threaded, the
// store not yet published).
//
// Each apply function validates first and changes memory only when nothing can fail any more
// (reads of a partial chunk's home happen before the page map changes), so an operation that
// throws leaves the object as it was: that is the "typed error, nothing changed" of bad input,
// and at replay it makes a record that does not apply an error naming its LSN rather than a half
// state. Frees go to the allocator, which defers them past the next durable checkpoint.

import StrataIO
import StrataLog
import StrataPool

extension ObjectStore {
    /// `tag`: the open checkpoint, which every change made here is tagged with (a transaction
    /// holds the gate and knows it; replay reads it once: no checkpoint runs during replay).
    func apply(_ operation: ObjectOperation, replaying: Bool, tag: UInt64) throws(ObjectStoreError) {
        if case .nothing = operation { return }
        switch operation {
        case .nothing:
            return
        case .create(let object, let type, let mode, let uid, let gid, let timeNs):
            guard object > 0 else { throw .noSuchObject(object: 0) }
            if try loadDnode(object) != nil { throw .objectExists(object: object) }
            let dnode = Dnode(objectNumber: object, type: type, mode: mode, uid: uid, gid: gid, timeNs: timeNs)
            dnodes.update(dnode, dirtyIn: tag)
            stateLock.withLock {
                nextObject = max(nextObject, object + 1)
                _ = dirtyObjects.insert(object)
            }

        case .destroy(let object):
            try applyDestroy(object, tag: tag)

        case .setAttributes(let object, let change):
            var dnode = try existing(object)
            change.apply(to: &dnode)
            dnodes.update(dnode, dirtyIn: tag)

        case .writeInline(let object, let offset, let bytes):
            try withBytes(of: bytes) { raw throws(ObjectStoreError) in
                try applyWriteInline(object, offset: offset, bytes: raw, tag: tag)
            }

        case .writeExtent(let object, let extent):
            var dnode = try existing(object, dataOperation: "write")
            try checkRange(object, extent.logicalOffsetBytes, extent.lengthBytes)
            let state = state(of: object)
            let map = try extentMap(of: state, dnode: dnode)
            if replaying {
                for copy in extent.copies {
                    guard copy.deviceIndex < pool.devices.count else {
                        throw .corrupt("object \(object): extent on device \(copy.deviceIndex) of \(pool.devices.count)")
                    }
                    pool.allocator.markAllocated(copy)
                }
            }
            for freed in map.replace(with: extent) { pool.allocator.free(freed) }
            dropPages(state, chunks: extent.logicalOffsetBytes / 4096 ..< extent.logicalEndBytes / 4096)
            if extent.logicalEndBytes > dnode.sizeBytes {
                dnode.sizeBytes = extent.logicalEndBytes
                dnodes.update(dnode, dirtyIn: tag)
            }
            markDirty(object)

        case .punch(let object, let offset, let length):
            let dnode = try existing(object, dataOperation: "punch")
            try checkRange(object, offset, length)
            let state = state(of: object)
            let map = try extentMap(of: state, dnode: dnode)
            try zeroAndUnmap(state, map: map, sizeBytes: dnode.sizeBytes, range: offset ..< offset + length)
            markDirty(object)

        case .truncate(let object, let size):
            var dnode = try existing(object, dataOperation: "truncate")
            guard size <= ObjectStore.sizeBytesMax else { throw .rangeInvalid(object: object, offsetBytes: size, lengthBytes: 0) }
            let state = state(of: object)
            let map = try extentMap(of: state, dnode: dnode)
            if size < dnode.sizeBytes {
                let mappedEnd = map.extents.last?.logicalEndBytes ?? 0
                let pageEnd = ((state.pages.keys.max() ?? 0) + 1) * 4096
                let end = max(roundUp(dnode.sizeBytes), mappedEnd, state.pages.isEmpty ? 0 : pageEnd)
                try zeroAndUnmap(state, map: map, sizeBytes: dnode.sizeBytes, range: size ..< max(end, size))
            }
            dnode.sizeBytes = size
            dnodes.update(dnode, dirtyIn: tag)
            markDirty(object)

        case .setXattr(let object, let name, let value):
            var dnode = try existing(object)
            let text = try xattrName(object, name)
            do { try dnode.setXattr(text, value, store: metadata) } catch { throw .dnode(error) }
            dnodes.update(dnode, dirtyIn: tag)

        case .removeXattr(let object, let name):
            var dnode = try existing(object)
            let text = try xattrName(object, name)
            let removed: Bool
            do { removed = try dnode.removeXattr(text, store: metadata) } catch { throw .dnode(error) }
            guard removed else { throw .noSuchXattr(object: object, name: text) }
            dnodes.update(dnode, dirtyIn: tag)

        case .indexInsert(let object, let key, let value, let upsert):
            let dnode = try existing(object, indexOperation: "index insert")
            let state = state(of: object)
            indexLock.lock()
            defer { indexLock.unlock() }
            let tree = try indexTree(of: state, dnode: dnode)
            do { try tree.insert(key, value, mode: upsert ? .upsert : .mustNotExist) } catch { throw .index(object: object, error) }
            markDirty(object)

        case .indexDelete(let object, let key):
            let dnode = try existing(object, indexOperation: "index delete")
            let state = state(of: object)
            indexLock.lock()
            defer { indexLock.unlock() }
            let tree = try indexTree(of: state, dnode: dnode)
            do { try tree.delete(key) } catch { throw .index(object: object, error) }
            markDirty(object)
        }
    }

    /// Largest object size and offset: 2^63 (Lustre's and Linux's `loff_t` limit).
    public static let sizeBytesMax: UInt64 = 1 << 63

    func existing(_ object: UInt64) throws(ObjectStoreError) -> Dnode {
        guard let dnode = try loadDnode(object) else { throw .noSuchObject(object: object) }
        return dnode
    }

    func existing(_ object: UInt64, dataOperation: String) throws(ObjectStoreError) -> Dnode {
        let dnode = try existing(object)
        guard dnode.type == .regular || dnode.type == .symlink else { throw .wrongType(object: object, type: dnode.type, operation: dataOperation) }
        return dnode
    }

    func existing(_ object: UInt64, indexOperation: String) throws(ObjectStoreError) -> Dnode {
        let dnode = try existing(object)
        guard dnode.type == .index || dnode.type == .directory else { throw .wrongType(object: object, type: dnode.type, operation: indexOperation) }
        return dnode
    }

    func checkRange(_ object: UInt64, _ offset: UInt64, _ length: UInt64) throws(ObjectStoreError) {
        guard length > 0, offset <= ObjectStore.sizeBytesMax, length <= ObjectStore.sizeBytesMax - offset else {
            throw .rangeInvalid(object: object, offsetBytes: offset, lengthBytes: length)
        }
    }

    func xattrName(_ object: UInt64, _ bytes: [UInt8]) throws(ObjectStoreError) -> String {
        let text = String(decoding: bytes, as: UTF8.self)
        guard Array(text.utf8) == bytes else {
            throw .dnode(.xattrNameInvalid(object: object, nameBytes: bytes.count, max: DnodeLimits.xattrNameBytesMax))
        }
        return text
    }

    // MARK: Pages

    /// Copies `bytes` at `offset` into the object's pages, reading a partially covered chunk from
    /// its home first (or zeros for a hole or past the end). With `skipHoles`, chunks that are a
    /// hole with no page are left alone (zeroing them would change nothing). All reads happen
    /// before any page changes.
    /// Returns the number of pages added, which the caller adds to `dirtyPageBytes` (with its
    /// other state changes, in one trip through the state lock).
    func writePages(_ state: ObjectState, map: ExtentMap, sizeBytes: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer,
                    skipHoles: Bool, wholePageChecksum: UInt32? = nil) throws(ObjectStoreError) -> Int {
        let end = offset + UInt64(bytes.count)
        let firstChunk = offset / 4096
        let lastChunk = (end - 1) / 4096
        var added = 0
        if firstChunk == lastChunk {
            // Every small overwrite: no array of prepared pages (no allocation per write).
            guard let prepared = try preparePage(state, map: map, sizeBytes: sizeBytes, chunk: firstChunk, offset: offset, end: end,
                                                 skipHoles: skipHoles) else { return 0 }
            fillPage(state, prepared, chunk: firstChunk, offset: offset, bytes: bytes, wholePageChecksum: wholePageChecksum)
            added = prepared.isNew ? 1 : 0
        } else {
            var prepared: [(chunk: UInt64, page: Page, isNew: Bool)] = []
            prepared.reserveCapacity(Int(lastChunk - firstChunk + 1))
            for chunk in firstChunk...lastChunk {
                if let entry = try preparePage(state, map: map, sizeBytes: sizeBytes, chunk: chunk, offset: offset, end: end, skipHoles: skipHoles) {
                    prepared.append((chunk, entry.page, entry.isNew))
                }
            }
            // Nothing can fail from here on.
            for entry in prepared {
                fillPage(state, (entry.page, entry.isNew), chunk: entry.chunk, offset: offset, bytes: bytes, wholePageChecksum: nil)
                if entry.isNew { added += 1 }
            }
        }
        return added
    }

    /// The page chunk `chunk` of a write of `offset..<end` goes into, read from home first when
    /// partly covered: the object's page; a new one (a copy when the page is staged — the
    /// checkpoint's writeback reads it — or a fresh page when the write covers it whole); nil
    /// for a hole left alone (`skipHoles`). Changes nothing.
    private func preparePage(_ state: ObjectState, map: ExtentMap, sizeBytes: UInt64, chunk: UInt64, offset: UInt64, end: UInt64,
                             skipHoles: Bool) throws(ObjectStoreError) -> (page: Page, isNew: Bool)? {
        let start = chunk * 4096
        let whole = offset <= start && end >= start + 4096
        if let page = state.pages[chunk] {
            guard page.isStaged else { return (page, false) }
            return (whole ? Page() : Page(copying: page), true)
        }
        if skipHoles && (start >= sizeBytes || map.chunk(containing: start) == nil) { return nil }
        let page = Page()
        if !whole { try readHome(state.number, map: map, sizeBytes: sizeBytes, chunk: chunk, into: page.bytes) }
        return (page, true)
    }

    /// Copies the part of `bytes` (written at `offset`) that falls in `chunk` into its prepared
    /// page, sets the page's checksum, and installs a new page. `wholePageChecksum`, for a write
    /// of exactly this page, is `CRC32C.checksum(bytes)` taken by the caller (checked in debug
    /// builds), so the page is not read again to checksum it.
    private func fillPage(_ state: ObjectState, _ prepared: (page: Page, isNew: Bool), chunk: UInt64, offset: UInt64,
                          bytes: UnsafeRawBufferPointer, wholePageChecksum: UInt32?) {
        let start = chunk * 4096
        let end = offset + UInt64(bytes.count)
        let from = max(offset, start)
        let to = min(end, start + 4096)
        let page = prepared.page
        UnsafeMutableRawBufferPointer(rebasing: page.bytes[Int(from - start) ..< Int(to - start)])
            .copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[Int(from - offset) ..< Int(to - offset)]))
        if from == start && to == start + 4096, let given = wholePageChecksum {
            assert(given == CRC32C.checksum(UnsafeRawBufferPointer(page.bytes)), "page checksum given for object \(state.number) chunk \(chunk) is wrong")
            page.checksum = given
        } else {
            page.checksum = CRC32C.checksum(UnsafeRawBufferPointer(page.bytes))
        }
        if prepared.isNew { state.pages[chunk] = page }
    }

    /// A small write: the bytes go to the object's pages (the record carries them to the log).
    /// Shared by `apply(.writeInline)` and `Transaction.write`, which encodes its record straight
    /// from the caller's bytes and applies from them (no copy of the data in an operation).
    func applyWriteInline(_ object: UInt64, offset: UInt64, bytes: UnsafeRawBufferPointer, tag: UInt64,
                          wholePageChecksum: UInt32? = nil) throws(ObjectStoreError) {
        // The dnode's type and size borrowed from the cache (no copy of the dnode, no retain of
        // its arrays); the whole dnode only when it is not cached, its extent map is not loaded,
        // or the write grows the object (all before anything changes).
        var dnode: Dnode? = nil
        let facts: (type: ObjectType, sizeBytes: UInt64)
        if let cached = dnodes.withDnode(object, { (type: $0.type, sizeBytes: $0.sizeBytes) }) {
            facts = cached
        } else {
            let loaded = try existing(object)
            dnode = loaded
            facts = (loaded.type, loaded.sizeBytes)
        }
        guard facts.type == .regular || facts.type == .symlink else { throw .wrongType(object: object, type: facts.type, operation: "write") }
        try checkRange(object, offset, UInt64(bytes.count))
        let end = offset + UInt64(bytes.count)
        let state = state(of: object)
        let map: ExtentMap
        if let loaded = state.extentMap {
            map = loaded
        } else {
            if dnode == nil { dnode = try existing(object) }
            map = try extentMap(of: state, dnode: dnode!)
        }
        if end > facts.sizeBytes && dnode == nil { dnode = try existing(object) }
        let added = try writePages(state, map: map, sizeBytes: facts.sizeBytes, offset: offset, bytes: bytes, skipHoles: false,
                                   wholePageChecksum: wholePageChecksum)
        if end > facts.sizeBytes, var grown = dnode {
            grown.sizeBytes = end
            dnodes.update(grown, dirtyIn: tag)
        }
        // The new pages' bytes and the dirty mark in one trip through the state lock.
        stateLock.withLock {
            dirtyPageBytes += added * Page.bytes
            _ = dirtyObjects.insert(object)
        }
    }

    /// Removes the pages of `chunks`; a staged page stays counted until its write completes.
    func dropPages(_ state: ObjectState, chunks: Range<UInt64>) {
        guard !state.pages.isEmpty, !chunks.isEmpty else { return }
        var removed = 0
        if UInt64(state.pages.count) < chunks.upperBound - chunks.lowerBound {
            for chunk in Array(state.pages.keys) where chunks.contains(chunk) {
                if let page = state.pages.removeValue(forKey: chunk), !page.isStaged { removed += 1 }
            }
        } else {
            for chunk in chunks {
                if let page = state.pages.removeValue(forKey: chunk), !page.isStaged { removed += 1 }
            }
        }
        if removed > 0 { stateLock.withLock { dirtyPageBytes -= removed * Page.bytes } }
    }

    /// Zeroes the unaligned edges of `range` in pages and unmaps its aligned middle.
    func zeroAndUnmap(_ state: ObjectState, map: ExtentMap, sizeBytes: UInt64, range: Range<UInt64>) throws(ObjectStoreError) {
        guard !range.isEmpty else { return }
        let innerStart = roundUp(range.lowerBound)
        let innerEnd = range.upperBound / 4096 * 4096
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var added = 0                                   // counted even when a later edge throws
        defer { if added > 0 { stateLock.withLock { dirtyPageBytes += added * Page.bytes } } }
        if innerStart > innerEnd {
            // The whole range is inside one chunk.
            added += try writePages(state, map: map, sizeBytes: sizeBytes, offset: range.lowerBound,
                           bytes: UnsafeRawBufferPointer(rebasing: zeros[0 ..< Int(range.count)]), skipHoles: true)
            return
        }
        if range.lowerBound < innerStart {
            added += try writePages(state, map: map, sizeBytes: sizeBytes, offset: range.lowerBound,
                           bytes: UnsafeRawBufferPointer(rebasing: zeros[0 ..< Int(innerStart - range.lowerBound)]), skipHoles: true)
        }
        if innerEnd < range.upperBound {
            added += try writePages(state, map: map, sizeBytes: sizeBytes, offset: innerEnd,
                           bytes: UnsafeRawBufferPointer(rebasing: zeros[0 ..< Int(range.upperBound - innerEnd)]), skipHoles: true)
        }
        if innerStart < innerEnd {
            for freed in map.punch(innerStart ..< innerEnd) { pool.allocator.free(freed) }
            dropPages(state, chunks: innerStart / 4096 ..< innerEnd / 4096)
        }
    }

    /// Reads chunk `chunk` of the object from its home (verified) into a 4 KiB aligned buffer;
    /// zeros for a hole or past the end.
    func readHome(_ object: UInt64, map: ExtentMap, sizeBytes: UInt64, chunk: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(ObjectStoreError) {
        let start = chunk * 4096
        buffer.initializeMemory(as: UInt8.self, repeating: 0)
        guard start < sizeBytes else { return }
        for piece in map.lookup(start ..< start + 4096) {
            guard let extent = piece.extent else { continue }
            let span = extent.chunkSpan(covering: piece.logicalRange)
            precondition(span.lengthBytes <= 4096 && span.offsetInExtentBytes + extent.logicalOffsetBytes == start,
                         "object \(object): chunk \(chunk) is not one 4 KiB chunk of its extent")
            try readVerified(object, extent: extent, span: span, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0 ..< Int(span.lengthBytes)]))
        }
    }

    /// Reads the chunks `span` of `extent` into `buffer` (aligned, span-sized) from the first copy
    /// that verifies; the error of the last copy tried when none does.
    func readVerified(_ object: UInt64, extent: MappedExtent, span: ChunkSpan, into buffer: UnsafeMutableRawBufferPointer) throws(ObjectStoreError) {
        var lastError: ObjectStoreError = .corrupt("object \(object): extent without copies")
        for copy in extent.copies {
            do {
                try pool.devices[copy.deviceIndex].read(into: buffer, at: copy.offsetBytes + span.offsetInExtentBytes)
            } catch {
                lastError = .io(error)
                continue
            }
            do {
                try extent.verify(UnsafeRawBufferPointer(buffer), span: span, object: object)
                return
            } catch {
                lastError = .extentMap(error)
            }
        }
        throw lastError
    }

    // MARK: Destroy

    func applyDestroy(_ object: UInt64, tag: UInt64) throws(ObjectStoreError) {
        let dnode = try existing(object)
        let state = state(of: object)
        var metadataBlocks: [BlockPointer] = []
        var dataExtents: [Extent] = []
        switch dnode.type {
        case .index, .directory:
            if case .tree(let root) = dnode.extentMap {
                indexLock.lock()
                defer { indexLock.unlock() }
                do {
                    let persisted = try IndexTree(root: root, store: metadata, name: "object \(object)",
                                                  cache: IndexNodeCache(budgetBytes: 0))
                    let check = persisted.verify()
                    if let problem = check.problems.first { throw ObjectStoreError.index(object: object, problem) }
                    metadataBlocks = check.blockPointers
                } catch let error as ObjectStoreError {
                    throw error
                } catch let error as IndexTreeError {
                    throw .index(object: object, error)
                } catch {
                    throw .failed("\(error)")
                }
            }
        default:
            let map = try extentMap(of: state, dnode: dnode)
            let references = map.references
            metadataBlocks = references.metadataBlocks
            dataExtents = map.extents.flatMap(\.copies)
        }
        if !dnode.systemAttributes.overflowBlock.isNull { metadataBlocks.append(dnode.systemAttributes.overflowBlock) }
        // Nothing can fail from here on.
        for pointer in metadataBlocks { metadata.free(pointer) }
        for extent in dataExtents { pool.allocator.free(extent) }
        dropPages(state, chunks: 0 ..< UInt64.max / 4096)
        if state.index != nil {
            indexLock.lock()
            state.index = nil
            indexLock.unlock()
        }
        state.extentMap = nil
        stateLock.withLock {
            objects.removeValue(forKey: object)
            dirtyObjects.remove(object)
        }
        dnodes.destroy(object, dirtyIn: tag)
    }
}

@inline(__always) func roundUp(_ value: UInt64) -> UInt64 { (value + 4095) / 4096 * 4096 }
