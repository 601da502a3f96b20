/* The entry stub: the code between the sled and the C++ dispatcher, and every raw `syscall`
 * instruction of the library. The rewriter never touches [zpoline_detail_code_begin,
 * zpoline_detail_code_end).
 *
 * On entry from a rewritten site (`call *%rax`): rax = syscall number, arguments in rdi, rsi, rdx,
 * r10, r8, r9, (%rsp) = the address after the site. The 8 bytes of the return address are the
 * only memory the call has touched; everything down to 128 bytes below the caller's rsp may be
 * the caller's red zone, so the stub steps over it before using the stack.
 *
 * On return, every register except rax holds its value from before the call, like a real
 * `syscall`, except rcx = return address and r11 = RFLAGS, which is also what `syscall` leaves.
 * The layout pushed here is zpoline::detail::RegisterFrame (dispatch/frame.hpp). */

#define FRAME_RAX 96
#define FRAME_RETURN 240
#define RED_ZONE 128

        .text
        .globl zpoline_detail_code_begin
        .hidden zpoline_detail_code_begin
zpoline_detail_code_begin:

        .globl zpoline_detail_entry
        .hidden zpoline_detail_entry
        .type zpoline_detail_entry, @function
        .p2align 6
zpoline_detail_entry:
        lea -RED_ZONE(%rsp), %rsp               /* step over the caller's red zone */
        pushfq                                  /* from here on flags may change */
        cmp $15, %rax                           /* rt_sigreturn: run it on the signal frame */
        je .Lsigreturn
        mov RED_ZONE+8(%rsp), %rcx              /* rcx, r11: free, `syscall` clobbers them */
        cmpw $0xd0ff, -2(%rcx)                  /* came from a `call *%rax` (ff d0)? */
        jne .Lstray_call
        mov zpoline_detail_thread_state@gottpoff(%rip), %r11
        cmpl $0, %fs:(%r11)                     /* bypass depth of this thread */
        jne .Lbypass
        cmpb $0, zpoline_detail_hook_live(%rip)
        je .Lbypass

.Lfull:                                         /* save everything, call the dispatcher */
        push %rax
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        push %rdi
        push %rsi
        push %rdx
        push %r10
        push %r8
        push %r9
        mov %rsp, %rbx                          /* rbx: the RegisterFrame, kept across calls */
        and $-64, %rsp                          /* XSAVE areas are 64-byte aligned */
        sub zpoline_detail_xsave_size(%rip), %rsp
        xor %ecx, %ecx                          /* XRSTOR faults unless header bytes 8..63 are 0 */
        mov %rcx, 520(%rsp)
        mov %rcx, 528(%rsp)
        mov %rcx, 536(%rsp)
        mov %rcx, 544(%rsp)
        mov %rcx, 552(%rsp)
        mov %rcx, 560(%rsp)
        mov %rcx, 568(%rsp)
        mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $2, zpoline_detail_xsave_mode(%rip)
        jne 1f
        xsavec (%rsp)                           /* compacted, skips components in init state */
        jmp 3f
1:      cmpb $1, zpoline_detail_xsave_mode(%rip)
        jne 2f
        xsave (%rsp)
        jmp 3f
2:      fxsave (%rsp)
3:      cld                                     /* the C++ ABI wants DF clear */
        mov %rbx, %rdi
        mov %rsp, %rsi
        call zpoline_detail_dispatch
        mov %rax, FRAME_RAX(%rbx)
        mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $0, zpoline_detail_xsave_mode(%rip)
        je 4f
        xrstor (%rsp)
        jmp 5f
4:      fxrstor (%rsp)
5:      mov %rbx, %rsp
        pop %r9
        pop %r8
        pop %r10
        pop %rdx
        pop %rsi
        pop %rdi
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        pop %rax
.Lreturn:                                       /* (%rsp) = saved RFLAGS */
        mov (%rsp), %r11                        /* r11 = RFLAGS, as `syscall` leaves it */
        popfq
        lea RED_ZONE(%rsp), %rsp
        mov (%rsp), %rcx                        /* rcx = return address, as `syscall` leaves it */
        ret

.Lbypass:                                       /* no hook: straight to the kernel, */
        cmp $56, %rax                           /* except clone, vfork and clone3, whose child */
        je .Lfull                               /* must not return through this stack frame */
        cmp $58, %rax
        je .Lfull
        cmp $435, %rax
        je .Lfull
        syscall
        jmp .Lreturn

.Lsigreturn:
        lea RED_ZONE+16(%rsp), %rsp             /* exactly the stack the restorer had */
        syscall                                 /* does not return */
        ud2

.Lstray_call:                                   /* a call into page 0 that no site made */
        mov %rcx, %rdi
        mov %rax, %rsi
        and $-16, %rsp
        call zpoline_detail_report_stray_call   /* does not return */
        ud2
        .size zpoline_detail_entry, .-zpoline_detail_entry

/* long zpoline_detail_raw_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5) */
        .globl zpoline_detail_raw_syscall
        .hidden zpoline_detail_raw_syscall
        .type zpoline_detail_raw_syscall, @function
        .p2align 4
zpoline_detail_raw_syscall:
        mov %rdi, %rax
        mov %rsi, %rdi
        mov %rdx, %rsi
        mov %rcx, %rdx
        mov %r8, %r10
        mov %r9, %r8
        mov 8(%rsp), %r9
        syscall
        ret
        .size zpoline_detail_raw_syscall, .-zpoline_detail_raw_syscall

/* long zpoline_detail_clone_to_site(const CloneRequest* request)
 * Makes a clone/clone3 whose child starts on a new stack. The request's stack already holds the
 * application's return address at its top, so the child, which starts here with rsp = that
 * stack, `ret`s straight to the application with the application's registers and vector state.
 * CloneRequest (dispatch/frame.hpp): regs, xsave, number, args[6]. */
        .globl zpoline_detail_clone_to_site
        .hidden zpoline_detail_clone_to_site
        .type zpoline_detail_clone_to_site, @function
        .p2align 4
zpoline_detail_clone_to_site:
        push %rbx
        push %rbp
        push %r12
        push %r13
        push %r14
        push %r15
        push %rdi
        mov 8(%rdi), %rcx                       /* the application's vector state */
        mov zpoline_detail_xsave_mask(%rip), %eax
        mov zpoline_detail_xsave_mask+4(%rip), %edx
        cmpb $0, zpoline_detail_xsave_mode(%rip)
        je 1f
        xrstor (%rcx)
        jmp 2f
1:      fxrstor (%rcx)
2:      mov (%rsp), %rdi
        mov (%rdi), %r11                        /* the application's RegisterFrame */
        mov 88(%r11), %rbx
        mov 80(%r11), %rbp
        mov 72(%r11), %r12
        mov 64(%r11), %r13
        mov 56(%r11), %r14
        mov 48(%r11), %r15
        mov 16(%rdi), %rax
        mov 32(%rdi), %rsi
        mov 40(%rdi), %rdx
        mov 48(%rdi), %r10
        mov 56(%rdi), %r8
        mov 64(%rdi), %r9
        mov 24(%rdi), %rdi
        syscall
        test %rax, %rax
        jnz 3f
        ret                                     /* child: to the application */
3:      pop %rdi
        pop %r15
        pop %r14
        pop %r13
        pop %r12
        pop %rbp
        pop %rbx
        ret
        .size zpoline_detail_clone_to_site, .-zpoline_detail_clone_to_site

        .globl zpoline_detail_code_end
        .hidden zpoline_detail_code_end
zpoline_detail_code_end:

        .section .note.GNU-stack,"",@progbits
