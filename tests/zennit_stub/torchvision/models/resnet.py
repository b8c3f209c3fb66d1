class BasicBlock:  # never instantiated; isinstance checks in zennit only
    pass


class Bottleneck:
    pass
