output "cluster_name" {
  description = "Name of the ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "cluster_arn" {
  description = "ARN of the ECS cluster."
  value       = aws_ecs_cluster.this.arn
}

output "service_name" {
  description = "Name of the ECS service."
  value       = aws_ecs_service.this.name
}

output "service_arn" {
  description = "ARN of the ECS service."
  value       = aws_ecs_service.this.id
}

output "task_definition_family" {
  description = "Family of the task definition (the deploy workflow registers new revisions of it)."
  value       = aws_ecs_task_definition.this.family
}

output "migrate_task_definition_family" {
  description = "Family of the one-off `chatty migrate` task definition (the deploy workflow registers and runs new revisions of it)."
  value       = aws_ecs_task_definition.migrate.family
}

output "container_name" {
  description = "Name of the chatty container in the task definition."
  value       = local.container_name
}

output "execution_role_arn" {
  description = "ARN of the task execution role."
  value       = aws_iam_role.execution.arn
}

output "task_role_arn" {
  description = "ARN of the task role."
  value       = aws_iam_role.task.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the containers."
  value       = aws_cloudwatch_log_group.this.name
}
