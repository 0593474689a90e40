/* TEST DOUBLE: stand-in kernel headers for @KERNEL@ (include/ is what DKMS looks for) */
#define UTS_RELEASE "@KERNEL@"
