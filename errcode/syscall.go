package errcode

import (
	"errors"
	"fmt"
	"syscall"
)

// errnoCodes is the one table from system-call errors to codes that every
// driver uses (through Syscall). An errno it lacks is Internal.
var errnoCodes = map[syscall.Errno]Code{
	syscall.EPERM:  PermissionDenied,
	syscall.EACCES: PermissionDenied,

	syscall.ENOENT: NotFound,
	syscall.ENODEV: NotFound,
	syscall.ESRCH:  NotFound,
	syscall.ENXIO:  NotFound,

	syscall.EEXIST: AlreadyExists,

	syscall.EINVAL:       InvalidArgument,
	syscall.ERANGE:       InvalidArgument,
	syscall.ENAMETOOLONG: InvalidArgument,
	syscall.E2BIG:        InvalidArgument,

	syscall.EADDRINUSE:    FailedPrecondition,
	syscall.EADDRNOTAVAIL: FailedPrecondition,
	syscall.ENOTEMPTY:     FailedPrecondition,
	syscall.ENOTDIR:       FailedPrecondition,
	syscall.EISDIR:        FailedPrecondition,
	syscall.EROFS:         FailedPrecondition,

	syscall.EOPNOTSUPP:      Unimplemented,
	syscall.EAFNOSUPPORT:    Unimplemented,
	syscall.EPROTONOSUPPORT: Unimplemented,
	syscall.ENOSYS:          Unimplemented,

	syscall.EAGAIN:       Unavailable,
	syscall.EINTR:        Unavailable,
	syscall.EBUSY:        Unavailable,
	syscall.ENOBUFS:      Unavailable,
	syscall.ENOMEM:       Unavailable,
	syscall.ENOSPC:       Unavailable,
	syscall.EMFILE:       Unavailable,
	syscall.ENFILE:       Unavailable,
	syscall.ETIMEDOUT:    Unavailable,
	syscall.ECONNREFUSED: Unavailable,
	syscall.ECONNRESET:   Unavailable,
	syscall.EHOSTUNREACH: Unavailable,
	syscall.ENETUNREACH:  Unavailable,
	syscall.ENETDOWN:     Unavailable,
}

// OfErrno returns the code of the errno in err's chain, by the one table
// every driver shares: EPERM and EACCES are PermissionDenied, ENOENT,
// ENODEV and ESRCH NotFound, EEXIST AlreadyExists, EINVAL InvalidArgument,
// EADDRINUSE FailedPrecondition, EOPNOTSUPP Unimplemented, EAGAIN, EBUSY
// and ENOBUFS Unavailable, and so on. An error without an errno, or with
// one the table lacks, is Internal.
func OfErrno(err error) Code {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return Internal
	}
	if c, ok := errnoCodes[errno]; ok {
		return c
	}
	return Internal
}

// Syscall returns err, the failure of a system call or a kernel request,
// with the code OfErrno gives it, its message prefixed by what was being
// done, formatted as fmt.Sprintf does:
//
//	return errcode.Syscall(err, "vxlan: add link %q", name)
func Syscall(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return &Error{Code: OfErrno(err), Err: fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)}
}
