output "alb_dns_name" {
  description = "DNS name of the ALB: create a CNAME/alias for public_hostname pointing at it."
  value       = module.alb.alb_dns_name
}

output "alb_zone_id" {
  description = "Route 53 hosted zone ID of the ALB (for alias records)."
  value       = module.alb.alb_zone_id
}

output "websocket_url" {
  description = "WebSocket endpoint for clients and the smoke test (GitHub variable SMOKE_WS_URL)."
  value       = "wss://${var.public_hostname}/ws"
}

output "ecr_repository_url" {
  description = "ECR repository URL (GitHub variable ECR_REPOSITORY takes its name part)."
  value       = module.ecr.repository_url
}

output "ecr_repository_name" {
  description = "ECR repository name (GitHub variable ECR_REPOSITORY)."
  value       = module.ecr.repository_name
}

output "ecs_cluster_name" {
  description = "ECS cluster name (GitHub variable ECS_CLUSTER)."
  value       = module.ecs.cluster_name
}

output "ecs_service_name" {
  description = "ECS service name (GitHub variable ECS_SERVICE)."
  value       = module.ecs.service_name
}

output "ecs_task_definition_family" {
  description = "Task definition family (GitHub variable ECS_TASK_FAMILY)."
  value       = module.ecs.task_definition_family
}

output "ecs_migrate_task_definition_family" {
  description = "Task definition family of the one-off migration task (GitHub variable ECS_MIGRATE_TASK_FAMILY)."
  value       = module.ecs.migrate_task_definition_family
}

output "ecs_container_name" {
  description = "Container name inside the task definition."
  value       = module.ecs.container_name
}

output "deploy_role_arn" {
  description = "IAM role for the deploy workflow (GitHub environment secret AWS_DEPLOY_ROLE_ARN)."
  value       = module.github_oidc.role_arn
}

output "log_group_name" {
  description = "CloudWatch log group of the chatty containers."
  value       = module.ecs.log_group_name
}

output "rds_address" {
  description = "Hostname of the PostgreSQL instance."
  value       = module.rds.address
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the Redis replication group."
  value       = module.redis.primary_endpoint_address
}

output "jwt_secret_arn" {
  description = "Secrets Manager ARN of the JWT signing secret (for the services that mint client tokens, and the smoke test)."
  value       = module.secrets.jwt_secret_arn
}

output "api_key_secret_arn" {
  description = "Secrets Manager ARN of the HTTP API key."
  value       = module.secrets.api_key_arn
}

output "alarm_topic_arn" {
  description = "SNS topic of the CloudWatch alarms: subscribe the on-call pager or chat integration to it."
  value       = module.alarms.topic_arn
}

output "ecs_task_subnet_ids" {
  description = "Subnets of the tasks, comma-separated: the deploy workflow's ECS_SUBNETS, for the migration task."
  value       = join(",", module.network.private_subnet_ids)
}

output "ecs_task_security_group_id" {
  description = "Security group of the tasks: the deploy workflow's ECS_SECURITY_GROUP, for the migration task."
  value       = module.security.tasks_security_group_id
}
