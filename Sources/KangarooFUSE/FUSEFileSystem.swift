/// A read-only filesystem served over FUSE. Nodeids are chosen by the
/// filesystem; the root is `FUSEProtocol.rootID` (1). Several worker threads
/// call these methods concurrently, so implementations must be thread-safe;
/// a method may block (e.g. `read` fetching data over the network) without
/// stalling requests served by the other workers.
///
/// Errors thrown map to the errno in `FUSEError.errno` (e.g. `.noEntry`).
public protocol FUSEFileSystem: Sendable {
    /// Resolves `name` (no NUL, never "." or "..") in directory `parent`.
    func lookup(parent: UInt64, name: [UInt8]) throws(FUSEError) -> FUSEEntry
    /// The kernel dropped `lookups` references to `nodeID` (LOOKUP and
    /// READDIRPLUS entries each count one).
    func forget(nodeID: UInt64, lookups: UInt64)
    func getattr(nodeID: UInt64) throws(FUSEError) -> FUSEAttributes
    func readlink(nodeID: UInt64) throws(FUSEError) -> [UInt8]
    /// `flags` are the open(2) flags. The default keeps the page cache
    /// across opens (FOPEN_KEEP_CACHE) as the content is immutable.
    /// Throwing `.notSupported` (ENOSYS) tells the kernel to stop sending
    /// OPEN and RELEASE for the rest of the mount (zero-message opens,
    /// FUSE_NO_OPEN_SUPPORT): opens then keep the page cache and READ gets
    /// handle 0. The same holds for `opendir` (OPENDIR/RELEASEDIR; readdir
    /// results stay cached).
    func open(nodeID: UInt64, flags: UInt32) throws(FUSEError) -> FUSEOpenReply
    /// Fills `buffer` (at most the requested size) with the bytes at
    /// `offset`; returns the count. Fewer bytes than `buffer.count` means
    /// end of file.
    func read(nodeID: UInt64, handle: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FUSEError) -> Int
    func release(nodeID: UInt64, handle: UInt64)
    func opendir(nodeID: UInt64) throws(FUSEError) -> FUSEOpenReply
    /// Appends entries after cookie `offset` (0 = from the start) until the
    /// writer is full. Include "." and ".." if `ls -a` should show them.
    func readdir(nodeID: UInt64, handle: UInt64, offset: UInt64, into writer: inout FUSEDirectoryWriter) throws(FUSEError)
    func releasedir(nodeID: UInt64, handle: UInt64)
    /// The kernel has read directory `nodeID` to its end with READDIRPLUS,
    /// so it now holds an inode for every entry: the filesystem may push
    /// the contents of entries it expects to be read next into the page
    /// cache through `cache` (a walk then reads them without a request).
    func directoryListed(nodeID: UInt64, cache: FUSEPageCache)
    func statfs(nodeID: UInt64) throws(FUSEError) -> FUSEStatfs
    /// The value of xattr `name`; throw `.noAttribute` (ENODATA) if absent.
    func getxattr(nodeID: UInt64, name: [UInt8]) throws(FUSEError) -> [UInt8]
    /// Names of all xattrs (without NUL terminators).
    func listxattr(nodeID: UInt64) throws(FUSEError) -> [[UInt8]]
    /// access(2) check; only called when the mount lacks default_permissions.
    func access(nodeID: UInt64, mask: UInt32) throws(FUSEError)
    /// How long the kernel may cache GETATTR results.
    var attributeTimeout: Duration { get }
    /// How long the kernel may cache a failed lookup (ENOENT); zero disables.
    var negativeLookupTimeout: Duration { get }
}

extension FUSEFileSystem {
    public func forget(nodeID: UInt64, lookups: UInt64) {}
    public func open(nodeID: UInt64, flags: UInt32) throws(FUSEError) -> FUSEOpenReply { .immutableFile }
    public func release(nodeID: UInt64, handle: UInt64) {}
    public func opendir(nodeID: UInt64) throws(FUSEError) -> FUSEOpenReply { .immutableDirectory }
    public func releasedir(nodeID: UInt64, handle: UInt64) {}
    public func directoryListed(nodeID: UInt64, cache: FUSEPageCache) {}
    public func statfs(nodeID: UInt64) throws(FUSEError) -> FUSEStatfs { FUSEStatfs() }
    public func getxattr(nodeID: UInt64, name: [UInt8]) throws(FUSEError) -> [UInt8] { throw .noAttribute }
    public func listxattr(nodeID: UInt64) throws(FUSEError) -> [[UInt8]] { [] }
    public func access(nodeID: UInt64, mask: UInt32) throws(FUSEError) {}
    public var attributeTimeout: Duration { .seconds(86_400) }
    public var negativeLookupTimeout: Duration { .seconds(86_400) }
}
