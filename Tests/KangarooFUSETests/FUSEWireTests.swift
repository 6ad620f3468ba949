import CKangaroo
import Testing
@testable import KangarooFUSE

@Suite struct FUSEWireTests {
    /// Our wire sizes equal the system header's sizeof.
    @Test(arguments: [
        ("fuse_in_header", FUSEWireSize.inHeader),
        ("fuse_out_header", FUSEWireSize.outHeader),
        ("fuse_attr", FUSEWireSize.attr),
        ("fuse_entry_out", FUSEWireSize.entryOut),
        ("fuse_attr_out", FUSEWireSize.attrOut),
        ("fuse_open_out", FUSEWireSize.openOut),
        ("fuse_init_in", FUSEWireSize.initIn),
        ("fuse_init_out", FUSEWireSize.initOut),
        ("fuse_kstatfs", FUSEWireSize.kstatfs),
        ("fuse_statfs_out", FUSEWireSize.kstatfs),
        ("fuse_getxattr_out", FUSEWireSize.getxattrOut),
        ("fuse_read_in", FUSEWireSize.readIn),
        ("fuse_dirent", FUSEWireSize.dirent),
        ("fuse_direntplus", FUSEWireSize.direntPlus),
        ("fuse_forget_one", FUSEWireSize.forgetOne),
        ("fuse_batch_forget_in", FUSEWireSize.batchForgetIn),
    ])
    func structSizesMatchKernelHeader(name: String, size: Int) {
        #expect(ckg_fuse_struct_size(name) == size)
    }

    /// Field offsets we hard-code equal the header's offsetof.
    @Test(arguments: [
        ("fuse_in_header.opcode", 4), ("fuse_in_header.unique", 8), ("fuse_in_header.nodeid", 16),
        ("fuse_in_header.uid", 24), ("fuse_in_header.pid", 32),
        ("fuse_attr.mode", 60), ("fuse_attr.nlink", 64), ("fuse_attr.rdev", 76), ("fuse_attr.blksize", 80),
        ("fuse_entry_out.attr", 40), ("fuse_attr_out.attr", 16),
        ("fuse_init_out.max_background", 16), ("fuse_init_out.max_write", 20),
        ("fuse_init_out.max_pages", 28), ("fuse_init_out.flags2", 32), ("fuse_init_in.flags2", 16),
        ("fuse_read_in.size", 16), ("fuse_read_in.flags", 32),
        ("fuse_kstatfs.bsize", 40), ("fuse_kstatfs.frsize", 48),
        ("fuse_dirent.name", 24), ("fuse_direntplus.dirent", 128),
    ])
    func fieldOffsetsMatchKernelHeader(name: String, offset: Int) {
        #expect(ckg_fuse_field_offset(name) == offset)
    }

    @Test func attributesRoundTrip() {
        let attributes = FUSEAttributes(
            inode: 0x1122_3344_5566_7788, mode: 0o100640, size: 123_456_789, linkCount: 3, uid: 1000, gid: 2000,
            rdev: 0x0801, accessTime: FUSETime(seconds: 1, nanoseconds: 2), modificationTime: FUSETime(seconds: 3, nanoseconds: 4),
            changeTime: FUSETime(seconds: 5, nanoseconds: 6), blockSize: 65536)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 200, alignment: 8)
        defer { buffer.deallocate() }
        attributes.encode(into: buffer, at: 8)
        let decoded = FUSEAttributes.decode(UnsafeRawBufferPointer(buffer), at: 8)
        #expect(decoded == attributes)
        #expect(decoded.blocks == (123_456_789 + 511) / 512)
    }

    @Test func headerRoundTrip() {
        let header = FUSEInHeader(length: 77, opcode: 15, unique: 99, nodeID: 5, uid: 1, gid: 2, pid: 3, totalExtensionLength: 1)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 40, alignment: 8)
        defer { buffer.deallocate() }
        header.encode(into: buffer)
        #expect(FUSEInHeader(UnsafeRawBufferPointer(buffer)) == header)
        #expect(FUSEInHeader(UnsafeRawBufferPointer(rebasing: buffer[0..<39])) == nil)
    }

    @Test func entryTimeoutsEncodeSecondsAndNanoseconds() {
        let entry = FUSEEntry(nodeID: 9, attributes: FUSEAttributes(inode: 9, mode: 0o040755), generation: 4,
                              entryTimeout: .milliseconds(1500), attributeTimeout: .seconds(7))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 128, alignment: 8)
        defer { buffer.deallocate() }
        entry.encode(into: buffer, at: 0)
        let bytes = UnsafeRawBufferPointer(buffer)
        #expect(bytes.get(UInt64.self, at: 0) == 9)
        #expect(bytes.get(UInt64.self, at: 8) == 4)
        #expect(bytes.get(UInt64.self, at: 16) == 1)
        #expect(bytes.get(UInt64.self, at: 24) == 7)
        #expect(bytes.get(UInt32.self, at: 32) == 500_000_000)
        #expect(bytes.get(UInt32.self, at: 36) == 0)
        #expect(FUSEAttributes.decode(bytes, at: 40).mode == 0o040755)
    }

    @Test func directoryWriterPadsAndStopsWhenFull() {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 80, alignment: 8)
        defer { buffer.deallocate() }
        var writer = FUSEDirectoryWriter(buffer: buffer, isPlus: false)
        let first = writer.append(name: Array("a".utf8), inode: 10, type: .regular, nextOffset: 1)
        #expect(first)
        #expect(writer.length == 32)  // 24 + 1 rounded up to 8
        let second = writer.append(name: Array("0123456789abcdef".utf8), inode: 11, type: .directory, nextOffset: 2)
        #expect(second)
        #expect(writer.length == 32 + 40)
        let third = writer.append(name: Array("b".utf8), inode: 12, type: .symlink, nextOffset: 3)
        #expect(!third)
        #expect(writer.length == 72)
        let bytes = UnsafeRawBufferPointer(buffer)
        #expect(bytes.get(UInt64.self, at: 0) == 10)
        #expect(bytes.get(UInt64.self, at: 8) == 1)
        #expect(bytes.get(UInt32.self, at: 16) == 1)
        #expect(bytes.get(UInt32.self, at: 20) == 8)  // DT_REG
        #expect(bytes[24] == UInt8(ascii: "a"))
        #expect(bytes[25...31].allSatisfy { $0 == 0 })
        #expect(bytes.get(UInt32.self, at: 32 + 20) == 4)  // DT_DIR
    }

    @Test(arguments: FUSEFileType.allCases)
    func direntTypesMatchDT(type: FUSEFileType) {
        let expected: [FUSEFileType: UInt32] = [.fifo: 1, .characterDevice: 2, .directory: 4, .blockDevice: 6,
                                                .regular: 8, .symlink: 10, .socket: 12]
        #expect(type.direntType == expected[type])
        #expect(FUSEFileType(mode: type.rawValue | 0o755) == type)
    }

    @Test func mountInfoLineParses() throws {
        let line = "36 35 0:52 / /tmp/with\\040space rw,nosuid,nodev,relatime shared:1 - fuse.kangaroo kangaroo rw,user_id=0,group_id=0"
        let info = try #require(FUSEMount.parseMountInfoLine(Substring(line)))
        #expect(info.major == 0 && info.minor == 52)
        #expect(info.mountPoint == "/tmp/with space")
        #expect(info.fileSystemType == "fuse.kangaroo")
        #expect(info.source == "kangaroo")
        #expect(FUSEMount.parseMountInfoLine("garbage") == nil)
    }

    @Test func mountDataString() {
        var options = FUSEMount.Options()
        #expect(options.data(fd: 5, uid: 0, gid: 0)
            == "fd=5,rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other")
        #expect(options.fileSystemType == "fuse.kangaroo")
        options.subtype = nil
        options.allowOther = false
        #expect(options.fileSystemType == "fuse")
        #expect(!options.data(fd: 5, uid: 0, gid: 0).contains("allow_other"))
    }
}
