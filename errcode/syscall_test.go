package errcode_test

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"testing"

	"github.com/musterkit/muster/errcode"
)

// TestSyscallTable feeds errnos, bare and wrapped as the os, net and
// netlink packages wrap them, through the one shared mapping.
func TestSyscallTable(t *testing.T) {
	cases := map[syscall.Errno]errcode.Code{
		syscall.EPERM:           errcode.PermissionDenied,
		syscall.EACCES:          errcode.PermissionDenied,
		syscall.ENOENT:          errcode.NotFound,
		syscall.ENODEV:          errcode.NotFound,
		syscall.ESRCH:           errcode.NotFound,
		syscall.EEXIST:          errcode.AlreadyExists,
		syscall.EINVAL:          errcode.InvalidArgument,
		syscall.ERANGE:          errcode.InvalidArgument,
		syscall.EADDRINUSE:      errcode.FailedPrecondition,
		syscall.EADDRNOTAVAIL:   errcode.FailedPrecondition,
		syscall.ENOTEMPTY:       errcode.FailedPrecondition,
		syscall.EOPNOTSUPP:      errcode.Unimplemented,
		syscall.EAFNOSUPPORT:    errcode.Unimplemented,
		syscall.EPROTONOSUPPORT: errcode.Unimplemented,
		syscall.EAGAIN:          errcode.Unavailable,
		syscall.EBUSY:           errcode.Unavailable,
		syscall.ENOBUFS:         errcode.Unavailable,
		syscall.EINTR:           errcode.Unavailable,
		syscall.ENOSPC:          errcode.Unavailable,
		syscall.EIO:             errcode.Internal, // not in the table
	}
	for errno, want := range cases {
		for _, err := range []error{
			errno,
			&os.PathError{Op: "open", Path: "/x", Err: errno},
			os.NewSyscallError("bind", errno),
			fmt.Errorf("netlink: %w", errno),
		} {
			got := errcode.Syscall(err, "driver: doing %s", "it")
			if errcode.Of(got) != want || !errors.Is(got, errno) {
				t.Errorf("Syscall(%v) has code %v, want %v (and the errno kept)", err, errcode.Of(got), want)
			}
			if want := "driver: doing it: " + err.Error(); got.Error() != want {
				t.Errorf("message %q, want %q", got, want)
			}
		}
	}
	if errcode.Syscall(nil, "x") != nil {
		t.Error("Syscall(nil) is not nil")
	}
	if got := errcode.OfErrno(errors.New("no errno")); got != errcode.Internal {
		t.Errorf("OfErrno without an errno = %v, want Internal", got)
	}
}
