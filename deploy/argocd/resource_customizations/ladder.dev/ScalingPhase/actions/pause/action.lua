-- spec.paused = true: the operator stops changing the ScalingPhase's
-- children. Argo CD writes the live object; put it in Git for it to last.
if obj.spec == nil then
  obj.spec = {}
end
obj.spec.paused = true
return obj
