"""The pure core: events, the state they fold into, and every scheduling decision.

Nothing here does IO, reads a clock or draws random numbers: time and ids arrive
as arguments, so the whole master logic is unit-testable with plain values.
"""
