-- Approves the transition the operator waits for: the annotation
-- ladder.dev/approve-transition names it ("<from>-to-<to>"), so an approval
-- never carries over to a different transition. From status.transition;
-- before one is recorded, from status.activePhase to status.targetPhase
-- (or spec.phase), one phase from the active one.
local from = nil
local to = nil
if obj.status ~= nil and obj.status.transition ~= nil then
  from = obj.status.transition["from"]
  to = obj.status.transition.to
end
if (from == nil or to == nil) and obj.status ~= nil then
  from = obj.status.activePhase
  to = obj.status.targetPhase
  if to == nil and obj.spec ~= nil then
    to = obj.spec.phase
  end
end
if from == nil or to == nil then
  error("no transition to approve: status.transition is empty and the active or target phase is unknown", 0)
end
-- The operator moves one phase at a time: before a transition is recorded,
-- the step to approve is the first one from the active phase toward the target.
if obj.status == nil or obj.status.transition == nil then
  if to > from then
    to = from + 1
  elseif to < from then
    to = from - 1
  end
end
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["ladder.dev/approve-transition"] = string.format("%d-to-%d", from, to)
return obj
