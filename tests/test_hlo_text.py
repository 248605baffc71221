"""jaxlab.hlo_text on a module written out by hand, in the optimized form XLA prints."""
from jaxlab import hlo_text

MODULE = """HloModule jit_f, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_add (param_0: f32[4], param_1: f32[4]) -> f32[4] {
  %param_0 = f32[4]{0} parameter(0)
  %param_1 = f32[4]{0} parameter(1)
  ROOT %add.1 = f32[4]{0} add(%param_0, %param_1), metadata={op_name="jit(f)/add"}
}

ENTRY %main.9 (a: f32[4]) -> (f32[4], f32[4], f32[4], f32[4], f32[4], f32[4]) {
  %a = f32[4]{0} parameter(0)
  %fusion = f32[4]{0} fusion(%a, %a), kind=kLoop, calls=%fused_add, metadata={op_name="jit(f)/add"}
  ROOT %tuple = (f32[4]{0}, f32[4]{0}, f32[4]{0}, f32[4]{0}, f32[4]{0}, f32[4]{0}) tuple(%a, %a, %a, %a, %a, /*index=5*/%fusion)
}
"""


def test_computations_instructions_attributes_and_the_entry():
  comps = hlo_text.parse(MODULE)
  assert list(comps) == ["fused_add", "main.9"]
  assert hlo_text.entry(MODULE) == "main.9"
  fusion = comps["main.9"]["fusion"]
  assert (fusion.opcode, fusion.operands, fusion.type) == ("fusion", ("a", "a"), "f32[4]{0}")
  assert fusion.attribute(r"calls=%?([\w.\-]+)") == "fused_add"
  assert fusion.attribute(r'op_name="([^"]*)"') == "jit(f)/add"
  assert fusion.attribute(r"to_apply=(\w+)") is None
  root = comps["main.9"]["tuple"]
  assert root.root and not fusion.root
  assert root.operands[-1] == "fusion"  # printed after an index comment
  assert comps["fused_add"]["param_1"].operands == ("1",)  # a parameter's number
