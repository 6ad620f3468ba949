#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
@testable import KangarooFUSE

/// Not a correctness test: bench/fuse-read.sh runs it (KANGAROO_FUSE_BENCH=1)
/// to compare fio reads of the 64 MiB generated file through the FUSE mount
/// with the same file on tmpfs. Prints one `BENCH` line per run: "cold"
/// after dropping the page cache, "warm" straight after with the cache kept.
@Suite(.enabled(if: ProcessInfo.processInfo.environment["KANGAROO_FUSE_BENCH"] == "1", "set KANGAROO_FUSE_BENCH=1"))
struct FUSEBenchmark {
    static let jobs: [String] = ProcessInfo.processInfo.environment["KANGAROO_FUSE_BENCH_FIO"].map { [$0] } ?? [
        "--rw=read --bs=1M --loops=4",
        "--rw=read --bs=1M --direct=1 --loops=4",
        "--rw=randread --bs=4k --direct=1 --numjobs=4 --time_based --runtime=3",
    ]

    @Test func fioReadsFUSEVersusTmpfs() throws {
        let readahead = ProcessInfo.processInfo.environment["KANGAROO_FUSE_BENCH_READAHEAD_KIB"].flatMap { Int($0) } ?? 1024
        try Fixture.withServer(threads: 16, readaheadKiB: readahead) { mountPoint, _ in
            let scratch = try Fixture.temporaryDirectory()
            defer {
                umount2(scratch, Int32(MNT_DETACH))
                rmdir(scratch)
            }
            try #require(mount("tmpfs", scratch, "tmpfs", 0, "size=128m") == 0)
            let fd = open(scratch + "/big", O_WRONLY | O_CREAT, 0o644)
            try #require(fd >= 0)
            let written = Fixture.bigContent.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            try #require(written == Fixture.bigSize)
            for job in Self.jobs {
                for (label, file) in [("fuse", mountPoint + "/big"), ("tmpfs", scratch + "/big")] {
                    for cache in ["cold", "warm"] {
                        // fio drops the file's cache itself (invalidate=1) unless told not to.
                        if cache == "cold" { _ = try Fixture.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"]) }
                        let invalidate = cache == "cold" ? "--invalidate=1" : "--invalidate=0"
                        let arguments = ["fio", "--name=\(label)", "--filename=\(file)", "--readonly", "--ioengine=psync",
                                         "--size=\(Fixture.bigSize)", "--group_reporting", "--output-format=terse",
                                         "--terse-version=3", invalidate] + job.split(separator: " ").map(String.init)
                        let (status, output) = try Fixture.run(arguments)
                        #expect(status == 0)
                        // terse v3: field 7 = read bandwidth (KiB/s), field 8 = read IOPS.
                        let fields = output.split(separator: ";", omittingEmptySubsequences: false)
                        let bandwidth = fields.count > 7 ? Double(fields[6]) ?? 0 : 0
                        let iops = fields.count > 8 ? Double(fields[7]) ?? 0 : 0
                        print("BENCH \(label) \(cache) [\(job)]: \(String(format: "%.0f", bandwidth / 1024)) MiB/s, \(String(format: "%.0f", iops)) IOPS")
                        #expect(bandwidth > 0)
                    }
                }
            }
        }
    }
}
