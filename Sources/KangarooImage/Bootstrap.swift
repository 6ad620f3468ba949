/// A parsed, validated bootstrap: the EROFS metadata plus the Kangaroo
/// extension. Every access to the bytes is bounds-checked; malformed input
/// produces `ImageError.corruptBootstrap`, never a trap.
public struct Bootstrap: Sendable {
    /// One entry of the EROFS device table.
    public struct Device: Sendable, Equatable {
        public var tag: String
        public var blocks: UInt32
        public var mappedBlockAddress: UInt32
    }

    public let bytes: [UInt8]
    let view: ByteView
    public let rootNid: UInt64
    public let inodeCount: UInt64
    public let blockCount: UInt32
    public let featureIncompat: UInt32
    public let buildTime: UInt64
    public let buildTimeNanoseconds: UInt32
    public let metaBlockAddress: UInt32
    public let xattrBlockAddress: UInt32
    public let devices: [Device]
    public let extensionRegion: KangarooExtension

    /// Blob table, chunk ToC, prefetch list.
    public var blobs: [BlobInfo] { extensionRegion.blobs }
    public var chunks: [ChunkInfo] { extensionRegion.chunks }
    public var prefetch: [String] { extensionRegion.prefetch }
    public var chunkSize: UInt32 { extensionRegion.chunkSize }

    public init(bytes: [UInt8]) throws(ImageError) {
        self.bytes = bytes
        let view = ByteView(bytes)
        self.view = view
        guard bytes.count >= EROFS.superOffset + EROFS.superBlockSize else {
            throw ImageError.corrupt("\(bytes.count) bytes is too short for a superblock")
        }
        guard Array(bytes[0..<4]) == BootstrapWriter.headerMagic else { throw ImageError.corrupt("Kangaroo header magic KGRO missing at byte 0") }
        let version = try view.u32(4)
        guard version == BootstrapWriter.headerVersion else { throw ImageError(.unsupported, "Kangaroo image version \(version) is not supported (expected 1)") }
        let extOffset = try view.u64(8), extSize = try view.u64(16)
        let s = EROFS.superOffset
        guard try view.u32(s) == EROFS.magic else { throw ImageError.corrupt("EROFS magic missing at byte 1024") }
        guard try view.u8(s + 12) == EROFS.blockBits else { throw ImageError(.unsupported, "EROFS block size 2^\(bytes[s + 12]) is not 4096") }
        guard try view.u8(s + 13) == 0 else { throw ImageError(.unsupported, "superblock extension slots are not supported") }
        let compat = try view.u32(s + 8)
        guard compat & EROFS.featureCompatSbChecksum == 0 else { throw ImageError(.unsupported, "superblock checksums are not used by Kangaroo images") }
        rootNid = UInt64(try view.u16(s + 14))
        inodeCount = try view.u64(s + 16)
        buildTime = try view.u64(s + 24)
        buildTimeNanoseconds = try view.u32(s + 32)
        blockCount = try view.u32(s + 36)
        guard bytes.count % EROFS.blockSize == 0, UInt64(blockCount) * UInt64(EROFS.blockSize) == UInt64(bytes.count) else {
            throw ImageError.corrupt("bootstrap is \(bytes.count) bytes but its superblock says \(blockCount) blocks")
        }
        metaBlockAddress = try view.u32(s + 40)
        xattrBlockAddress = try view.u32(s + 44)
        featureIncompat = try view.u32(s + 80)
        let known = EROFS.featureIncompatChunkedFile | EROFS.featureIncompatDeviceTable
        guard featureIncompat & ~known == 0 else {
            throw ImageError(.unsupported, "EROFS incompatible features 0x\(String(featureIncompat & ~known, radix: 16)) are not supported")
        }
        guard try view.u8(s + 90) == 0 else { throw ImageError(.unsupported, "dirblkbits must be 0") }
        var devices: [Device] = []
        if featureIncompat & EROFS.featureIncompatDeviceTable != 0 {
            let count = Int(try view.u16(s + 86))
            let start = Int(try view.u16(s + 88)) * EROFS.deviceSlotSize
            try view.check(start, count * EROFS.deviceSlotSize, "device table")
            for i in 0..<count {
                let o = start + i * EROFS.deviceSlotSize
                let raw = try view.slice(o, 64)
                let tag = String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                devices.append(Device(tag: tag, blocks: try view.u32(o + 64), mappedBlockAddress: try view.u32(o + 68)))
            }
        }
        self.devices = devices
        let eo = try view.offset(extOffset, length: extSize, "Kangaroo extension")
        extensionRegion = try KangarooExtension.decode(view, offset: eo, size: Int(extSize))
        guard extensionRegion.blobs.count == devices.count else {
            throw ImageError.corrupt("blob table has \(extensionRegion.blobs.count) blobs but the device table \(devices.count)")
        }
        for (i, d) in devices.enumerated() {
            let blob = extensionRegion.blobs[i]
            guard d.tag == blob.digestHex, UInt64(d.blocks) == blob.uncompressedBlocks, d.mappedBlockAddress == 0 else {
                throw ImageError.corrupt("device slot \(i) (tag \(d.tag), \(d.blocks) blocks) does not match blob table entry \(blob.digestHex)")
            }
        }
        let root = try inode(rootNid)
        guard root.kind == .directory else { throw ImageError.corrupt("root inode \(rootNid) is not a directory") }
    }
}
